"""`dynadnn search`: a Pareto family of sub-networks for this device, written as a family artifact.

One multi-objective search (NSGA-II plus budget-niche refinement) over the checkpoint's space, maximising
predicted top-1 and minimising predicted latency in every context at once. Candidates spread along the
predicted front of the first context are BN-calibrated on training images and measured here (top-1 on the
whole test split; batch-1 latency median/p95 per context on the faster of the resident TorchScript member and
ONNX Runtime, as the runtime serves it); the family is the measured Pareto front among them (accuracy rises
with latency), thinned to --members spread in latency. Latency comes from a profile directory (`dynadnn
profile`) or is profiled on the fly; accuracy from a trained predictor directory or from one trained now on
BN-calibrated evaluations of random members.
"""

from __future__ import annotations

import argparse
from contextlib import suppress
from pathlib import Path

from .common import add_checkpoint_arguments, add_command, parse_names, progress_bar


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "search", __doc__, "search a Pareto family of sub-networks and write family.json + family.safetensors",
                    ["dynadnn search zoo:animals --contexts cpu:1t,cpu:2t --profile runs/profile --members 8 --out runs/family",
                     "dynadnn search zoo:animals --contexts cpu:1t --out runs/family   # profiles and fits a predictor first"])
    add_checkpoint_arguments(p)
    p.add_argument("--contexts", default="cpu:1t,cpu:2t", help="comma-separated contexts (default cpu:1t,cpu:2t)")
    p.add_argument("--members", type=int, default=8, help="family size: at most this many members (default 8)")
    p.add_argument("--candidates", type=int, default=None,
                   help="architectures from the predicted front measured before choosing the family, besides the "
                        "space's smallest and largest members (default 3 x --members): the choice is made on "
                        "measurements, since the predictor's error is a few tenths of a point")
    p.add_argument("--out", required=True, help="family directory to write (whole, when the search is done)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result in --out (the whole folder)")
    p.add_argument("--profile", help="profile directory from `dynadnn profile` (default: profile now into OUT/profile)")
    p.add_argument("--predictor", help="accuracy predictor directory (default: train one now into OUT/predictor)")
    p.add_argument("--samples", type=int, default=300, help="random members measured to train the predictor (default 300)")
    p.add_argument("--data", help="dataset for calibration and evaluation (default: the checkpoint's, else animals)")
    p.add_argument("--calib-images", type=int, default=1000, help="training images for BN calibration (default 1000)")
    p.add_argument("--eval-images", type=int, default=None,
                   help="test images per member when measuring the predictor's training set (default: the "
                        "whole test split, as for family members; measured on the animals model, its two halves "
                        "rank the same members with a Kendall tau of only 0.46)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _predictor(args, net, data, tmp: Path, out: Path):
    from ..predict.fitting import fit_accuracy_predictor

    print(f"training an accuracy predictor on {args.samples} BN-calibrated members into {out / 'predictor'}/ "
          "(pass --predictor DIR to reuse one)")
    with progress_bar() as progress:
        predictor, report = fit_accuracy_predictor(net, data, args.samples, calib_images=args.calib_images,
                                                   eval_images=args.eval_images, seed=args.seed,
                                                   out=tmp / "predictor", checkpoint=args.checkpoint,
                                                   progress=progress)
    print(f"accuracy predictor: {report.model}, held-out RMSE {report.rmse:.2f} points, Kendall tau "
          f"{report.kendall_tau:.3f} (5-fold cross-validation over {report.n_test} measured members)")
    return predictor, report.to_dict()


def _tables(args, net, contexts: list[str], tmp: Path, out: Path):
    from ..predict.fitting import profile_device

    print(f"profiling this device into {out / 'profile'}/ (pass --profile DIR to reuse one)")
    with progress_bar() as progress:
        return profile_device(net, contexts, tmp / "profile", warmup=5, members=60, checkpoint=str(args.checkpoint),
                              progress=progress)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import dataset_of, load_dataset
    from ..fileio import output_dir, write_json
    from ..predict.accuracy import AccuracyPredictor
    from ..predict.fitting import check_predictor_sizes
    from ..predict.latency import load_tables
    from ..predict.profiling import check_contexts
    from ..provenance import checkpoint_ref
    from ..report import family_table
    from ..selection import carry_inputs, check_family_sizes, choose_family
    from ..supernet.checkpoint import load_checkpoint

    contexts = check_contexts(parse_names(args.contexts, "--contexts"))  # measured here: local contexts only
    check_family_sizes(args.members, args.candidates, args.calib_images, args.seed)
    if not args.predictor:
        check_predictor_sizes(args.samples, args.eval_images, args.calib_images, args.seed)
    out = Path(args.out)
    with suppress(OSError):  # an unreadable file: load_checkpoint names the problem
        checkpoint_ref(args.checkpoint)  # hashed before loading; what the artifacts record reuses it (cached)
    net, meta = load_checkpoint(args.checkpoint, args.preset)
    tables = load_tables(args.profile, net.space, contexts, checkpoint=args.checkpoint) if args.profile else None
    predictor = AccuracyPredictor.load(args.predictor, net.space, checkpoint=args.checkpoint) if args.predictor else None
    data_spec = args.data or dataset_of(meta, "animals")
    data = load_dataset(data_spec, image_size=max(net.space.resolutions), in_channels=net.space.in_channels)
    with output_dir(out, "family", "family.json", args.overwrite) as tmp:  # refuses a bad --out before the work
        carry_inputs(out, tmp, [args.profile, args.predictor])  # inputs read from inside --out stay there
        torch.manual_seed(args.seed)
        tables = tables or _tables(args, net, contexts, tmp, out)
        predictor, fit = (predictor, predictor.meta.get("fit", {})) if predictor else _predictor(args, net, data, tmp, out)
        with progress_bar() as progress:
            choice = choose_family(net, predictor, tables, data, members=args.members, candidates=args.candidates,
                                   calib_images=args.calib_images, seed=args.seed, checkpoint=str(args.checkpoint),
                                   provenance={"command": "dynadnn search", "dataset": data_spec,
                                               "profile": str(args.profile or out / "profile"), "predictor_fit": fit},
                                   progress=progress)
        fam = choice.family
        fam.save(tmp)
        write_json(tmp / "search.json", {"predictor_fit": fit, "members": len(fam.members),
                                         "candidates": len(choice.candidates), "dropped": len(choice.dropped),
                                         "thinned": len(choice.thinned)}, indent=1)
    print(family_table(fam))
    print(f"{len(choice.candidates)} candidates measured: {len(choice.dropped)} dominated by the measurements, "
          f"{len(choice.thinned)} more thinned out to keep at most {args.members}")
    print(f"family of {len(fam.members)} written to {out}/ (archive of {len(fam.archive)} non-dominated architectures)")
    return 0
