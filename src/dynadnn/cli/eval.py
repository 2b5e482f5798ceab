"""`dynadnn eval`: BN-calibrated top-1, MACs and parameters of super-network members.

Evaluate members of a super-network on the test split. Each member's BatchNorm statistics are re-estimated on
training images first (as OFA does): the shared running statistics belong to no single member. --no-calibrate
shows what happens without it.

CHECKPOINT may also be a training folder (`dynadnn train --out DIR`): it stands for DIR/final.safetensors, or
DIR/last.safetensors for an interrupted run. Every option is checked before the checkpoint or the data is
loaded. eval writes no file.
"""

from __future__ import annotations

import argparse
import json

from .. import validate
from .common import add_checkpoint_arguments, add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "eval", __doc__, "top-1 of members (BN re-calibrated per member), MACs and parameters",
                    ["dynadnn eval zoo:animals --data animals --subnets max,min,random:20",
                     "dynadnn eval runs/quick/final.safetensors --subnets max,min --json"])
    add_checkpoint_arguments(p)
    p.add_argument("--data", default=None, help="animals, digits or imagefolder:PATH (default: the checkpoint's)")
    p.add_argument("--subnets", default="max,min,random:20", help="comma list of max, min, random:N (default "
                                                                  "max,min,random:20)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random members")
    p.add_argument("--calib-images", type=int, default=2000, help="training images for BN calibration (2000)")
    p.add_argument("--no-calibrate", action="store_true", help="use the shared running statistics")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads, at most the CPUs this process may use")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from ..data import load_dataset
    from ..errors import UserError
    from ..evaluate import evaluate_members, parse_subnets, subnet_parts
    from ..supernet import load_checkpoint

    threads = None if args.threads is None else validate.threads(args.threads, "threads")
    validate.count(args.calib_images, "calib_images", low=1, high=10_000_000)
    validate.count(args.seed, "seed", low=0)
    subnet_parts(args.subnets)
    if threads is not None:
        torch.set_num_threads(threads)
    net, meta = load_checkpoint(args.checkpoint, args.preset)
    spec = args.data or meta.get("data")
    if not spec:
        raise UserError(f"{args.checkpoint}: no dataset in its metadata; pass --data")
    space = net.space
    data = load_dataset(spec, image_size=max(space.resolutions), in_channels=space.in_channels)
    members = parse_subnets(args.subnets, space, args.seed)
    console = Console(stderr=args.json)
    with console.status(f"evaluating {len(members)} member(s)") as status:
        done = []
        rows = evaluate_members(net, data, members, calibrate_bn=not args.no_calibrate, n_calib=args.calib_images,
                                with_cost=True, progress=lambda r: (done.append(r), status.update(
                                    f"evaluated {len(done)}/{len(members)}")))
    table = Table(title=f"{args.checkpoint} on {spec} ({data.n_test} test images, "
                        f"{'BN calibrated' if not args.no_calibrate else 'shared BN statistics'})")
    for col in ("member", "arch", "top-1 %", "MMACs", "params (k)"):
        table.add_column(col, justify="left" if col in ("member", "arch") else "right")
    from ..space import Arch

    for r in rows:
        table.add_row(r["name"], Arch.from_dict(r["arch"]).short(), f"{r['top1']:.2f}", f"{r['macs'] / 1e6:.2f}",
                      f"{r['params'] / 1e3:.1f}")
    console.print(table)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "data": spec, "calibrated": not args.no_calibrate,
                          "members": rows}))
    return 0
