"""`dynadnn profile`: build latency look-up tables for this device, per thread count (and CUDA).

Time each distinct layer of the checkpoint's search space at batch 1 on the backend the runtime serves with
(ONNX Runtime on the CPU: each layer exported as the runtime exports members; warm-up, then the median of many
runs in warm bursts, all layers round-robin, each turn divided by the machine's speed of the moment) for every
resolution and thread count, and on CUDA when present. Then time random whole members, fit a per-context
correction for what a per-layer sum misses (dispatch overhead between layers), and report MAPE and Kendall tau
of raw and corrected predictions on held-out members. Tables are written in Dynamic-OFA's format:
OUT/<context>/<r>_lookup_table.json plus table.json (correction, system load, report).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .common import add_checkpoint_arguments, add_command, parse_int_list, progress_bar


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "profile", __doc__, "time every layer of a space on this device and write latency tables",
                    ["dynadnn profile zoo:animals --threads 1,2 --out runs/profile",
                     "dynadnn profile runs/quick/final.safetensors --threads 1 --members 30 --out runs/profile"])
    p.add_argument("--threads", default="1,2", help="comma-separated CPU thread counts (contexts cpu:<N>t); default 1,2")
    add_checkpoint_arguments(p)
    p.add_argument("--cuda", choices=("auto", "yes", "no"), default="auto", help="also profile context 'cuda' (default: when present)")
    p.add_argument("--out", required=True, help="output directory (written whole when the profile is done)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result in --out (the whole folder)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed runs per layer (default 1200 on ort, in bursts of 16; 300 on torch, one per turn)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up runs per layer (default 10)")
    p.add_argument("--members", type=int, default=100, help="random whole members to time for the correction (default 100)")
    p.add_argument("--member-runs", type=int, default=None,
                   help="timed runs per member (default 600 on ort, in bursts of 4; 150 on torch: on a shared VM "
                        "a member's runs spread +-25 %%, so ranking members that differ by a few %% takes many)")
    p.add_argument("--backend", choices=("auto", "ort", "torch"), default="auto",
                   help="what runs the layers and members: ort (ONNX Runtime, what the runtime serves on the CPU; CPU "
                        "contexts only), torch (eager PyTorch), or auto (ort on the CPU, torch on CUDA; default)")
    p.add_argument("--resolutions", help="comma-separated resolutions (default: all of the preset)")
    p.set_defaults(func=run)


def local_contexts(threads: list[int], cuda: str) -> list[str]:
    import torch

    contexts = [f"cpu:{t}t" for t in threads]
    if cuda == "yes" and not torch.cuda.is_available():
        raise UserError("--cuda yes: no CUDA device is available here")
    if cuda == "yes" or (cuda == "auto" and torch.cuda.is_available()):
        contexts.append("cuda")
    return contexts


def hold_pages() -> None:
    """mlockall for the timing: this VM's page reclaim (DAMON pageout) otherwise stalls some runs; best effort."""
    from ..platform.local import LocalPlatform

    try:
        LocalPlatform().lock_memory()
    except OSError as exc:
        print(f"note: timing with pageable memory ({exc})")


def run(args: argparse.Namespace) -> int:
    from ..fileio import output_dir
    from ..predict.fitting import check_profile_options, profile_device
    from ..supernet.checkpoint import load_checkpoint
    from ..validate import threads as check_threads

    threads = list(dict.fromkeys(check_threads(t, "threads") for t in parse_int_list(args.threads, "--threads")))
    res = parse_int_list(args.resolutions, "--resolutions") if args.resolutions else None
    if args.backend == "ort" and args.cuda == "yes":
        raise UserError("--backend ort: ONNX Runtime times CPU contexts only; pass --cuda no, or --backend auto "
                        "(ort on the CPU, torch on CUDA)")
    contexts = local_contexts(threads, "no" if args.backend == "ort" else args.cuda)
    options = dict(runs=args.runs, warmup=args.warmup, members=args.members, member_runs=args.member_runs,
                   backend=args.backend)
    check_profile_options(None, contexts, **options)  # every number before the checkpoint is read
    net, _ = load_checkpoint(args.checkpoint, args.preset)
    check_profile_options(net.space, contexts, res, **options)
    out = Path(args.out)
    with output_dir(out, "profile", "profile.json", args.overwrite) as tmp:  # refuses a bad --out now
        hold_pages()
        with progress_bar() as progress:
            tables = profile_device(net, contexts, tmp, resolutions=res, checkpoint=str(args.checkpoint),
                                    progress=progress, **options)
        reports = {ctx: t.meta["report"] for ctx, t in tables.items()}
    print(f"{'context':8s} {'members':>7s} {'MAPE raw':>9s} {'MAPE corr':>9s} {'tau raw':>8s} {'tau corr':>8s} {'range ms':>14s}")
    for ctx, r in reports.items():
        print(f"{ctx:8s} {r['members']:7d} {r['mape_raw']:8.1f}% {r['mape_corrected']:8.1f}% {r['tau_raw']:8.3f} "
              f"{r['tau_corrected']:8.3f} {r['measured_min_ms']:6.2f}-{r['measured_max_ms']:.2f}"
              + ("  (with per-resolution offsets)" if r.get("resolution_offsets") else ""))
    print(f"tables written to {out}/")
    return 0
