"""The predictors of one checkpoint on one device, fitted on measurements made here.

    tables = profile_device(net, ["cpu:1t", "cpu:2t"], out="runs/profile")   # {context: LatencyTable}
    predictor, report = fit_accuracy_predictor(net, data, samples=300)

`profile_device` times every distinct layer of the space per context (on the backend the runtime serves
with), then random whole members, and fits the per-context correction for what a sum of layers misses.
`fit_accuracy_predictor` BN-calibrates and measures members of random sizes, then fits OFA's predictor.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import UserError
from ..evaluate import calibrate, top1
from ..fileio import write_json
from ..provenance import checkpoint_ref
from .accuracy import MIN_PAIRS, AccuracyPredictor, FitReport
from .latency import LatencyTable, context_dirname
from .profiling import check_members, count_layers, profile_layers

Progress = Callable[[str, int, int], None]  # (task, done, total)


def _quiet(task: str, done: int, total: int) -> None:
    pass


def profile_device(net, contexts: Sequence[str], out: str | Path | None = None, *,
                   resolutions: Sequence[int] | None = None, runs: int | None = None, warmup: int = 10,
                   members: int = 100, member_runs: int | None = None, backend: str = "auto",
                   checkpoint: str | None = None, progress: Progress = _quiet) -> dict[str, LatencyTable]:
    """Latency tables of `net`'s space for each context, measured on this device. Each table carries its
    correction and its member check (`table.meta["report"]`: MAPE and Kendall tau on held-out members).
    `checkpoint` (the path or zoo:NAME `net` came from) is recorded by its sha256. With `out`, each table is written to `out/<context>/` (Dynamic-OFA's format plus table.json),
    and `out/profile.json` (preset, contexts, each context's report). Runs
    default per backend (`predict.profiling.DEFAULT_RUNS`)."""
    space = net.space
    contexts, res = check_profile_options(space, contexts, resolutions, runs, warmup, members, member_runs, backend)
    sha = checkpoint_ref(checkpoint)[1]
    tables = {}
    onnx_cache: dict[str, bytes] = {}  # one export of each layer and member serves every thread count
    for ctx in contexts:
        n_layers, done = count_layers(space, res), [0]

        def layer_step(k: int, ctx=ctx, n_layers=n_layers, done=done) -> None:
            done[0] += k
            progress(f"{ctx}: layers", done[0], n_layers)

        entries, meta = profile_layers(space, ctx, res, runs, warmup, progress=layer_step, backend=backend,
                                       onnx_cache=onnx_cache)
        table = LatencyTable(space, ctx, entries, f"profile {ctx}", checkpoint_sha256=sha)
        done_m = [0]

        def member_step(k: int, ctx=ctx, done_m=done_m) -> None:
            done_m[0] += k
            progress(f"{ctx}: members", done_m[0], members)

        check = check_members(net, table, members, runs=member_runs, progress=member_step, backend=backend,
                              onnx_cache=onnx_cache)
        table.correction = check.fit()
        meta.update({"report": check.report, "checkpoint": str(checkpoint or ""),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "members": [{"arch": a.to_dict(), "measured_ms": round(float(m), 4),
                                  "p95_ms": round(float(p), 4), "lut_ms": round(float(lut), 4)}
                                 for a, m, p, lut in zip(check.archs, check.measured_ms, check.p95_ms, check.lut_ms)]})
        table.meta = meta
        if out is not None:
            table.save(Path(out) / context_dirname(ctx))
        tables[ctx] = table
    if out is not None:
        write_json(Path(out) / "profile.json", {"preset": space.name, "contexts": list(tables),
                                                "reports": {c: t.meta["report"] for c, t in tables.items()}}, indent=1)
    return tables


MAX_RUNS = 100_000  # timed runs of one layer or member: more is a typo, and would run for days
MAX_MEMBERS = 10_000  # members timed for the correction, or measured for the predictor


def check_profile_options(space, contexts: Sequence[str], resolutions: Sequence[int] | None = None,
                          runs: int | None = None, warmup: int = 10, members: int = 100,
                          member_runs: int | None = None, backend: str = "auto") -> tuple[list[str], list[int]]:
    """The checks `profile_device` makes first (callers may run them before other work): every option in
    range, every context measurable here (`check_contexts`) and, with `space`, every resolution one of its
    own. Returns (contexts, resolutions)."""
    from ..validate import count
    from .profiling import check_contexts, context_device, resolve_backend

    if runs is not None:
        count(runs, "runs", low=1, high=MAX_RUNS)
    count(warmup, "warmup", low=0, high=MAX_RUNS)
    count(members, "members", low=10, high=MAX_MEMBERS, why="at least 10 whole members to fit and check a correction")
    if member_runs is not None:
        count(member_runs, "member_runs", low=1, high=MAX_RUNS)
    contexts = check_contexts(contexts)
    for ctx in contexts:
        resolve_backend(backend, context_device(ctx)[0])
    if space is None:  # the numbers and contexts only (the space comes with the checkpoint)
        return contexts, []
    if isinstance(resolutions, (str, bytes)) or (resolutions is not None and not isinstance(resolutions, Sequence)):
        raise UserError(f"resolutions: expected a list of resolutions, got {resolutions!r}")
    res = list(resolutions or space.resolutions)
    bad = [r for r in res if isinstance(r, bool) or r not in space.resolutions]
    if bad:
        raise UserError(f"resolutions: {bad} not in space '{space.name}' ({list(space.resolutions)})")
    return contexts, sorted(set(int(r) for r in res))


def check_predictor_sizes(samples: int, eval_images: int | None = None, calib_images: int = 1000,
                          seed: int = 0) -> None:
    """The checks `fit_accuracy_predictor` makes first (callers may run them before other long work)."""
    from ..validate import count

    count(samples, "samples", low=MIN_PAIRS, high=MAX_MEMBERS,
          why=f"at least {MIN_PAIRS} measured members for the accuracy predictor")
    if eval_images is not None:
        count(eval_images, "eval_images", low=1)
    check_measure_sizes(calib_images, seed)


def check_measure_sizes(calib_images: int, seed: int) -> None:
    """BN calibration images (>= 1) and a seed every generator takes (0..2^32-1)."""
    from ..validate import count

    count(calib_images, "calib_images", low=1)
    count(seed, "seed", low=0, high=2**32 - 1)


def fit_accuracy_predictor(net, data, samples: int = 300, *, calib_images: int = 1000, eval_images: int | None = None,
                           seed: int = 0, out: str | Path | None = None, checkpoint: str | None = None,
                           progress: Progress = _quiet) -> tuple[AccuracyPredictor, FitReport]:
    """Measure `samples` members of random sizes (the space's smallest and largest among them), each
    BN-calibrated on `calib_images` training images, on the test split (its first `eval_images` when
    given), and fit an accuracy predictor on them. The measured members are kept in `predictor.meta`;
    `checkpoint` (the path or zoo:NAME `net` came from) is recorded by its sha256."""
    check_predictor_sizes(samples, eval_images, calib_images, seed)
    space = net.space
    rng = random.Random(seed)
    archs = [space.min_arch(), space.max_arch()] + [space.sample_sized(rng) for _ in range(samples - 2)]
    calib = data.calibration_batches(calib_images, 200, seed=seed)
    measured = []
    for i, arch in enumerate(archs):
        measured.append(top1(net, arch, data, calibrate(net, arch, calib), limit=eval_images))
        progress("measuring members for the accuracy predictor", i + 1, len(archs))
    predictor, report = AccuracyPredictor.fit(space, archs, measured, hidden=(128, 128), epochs=150, seed=seed)
    predictor.checkpoint_sha256 = checkpoint_ref(checkpoint)[1]
    predictor.meta["samples"] = [{"arch": a.to_dict(), "top1": t} for a, t in zip(archs, measured)]
    if out is not None:
        predictor.save(out)
    return predictor, report
