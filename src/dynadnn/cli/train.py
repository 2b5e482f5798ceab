"""`dynadnn train`: sandwich-rule super-network training (single process, or DDP under torchrun).

Train a weight-sharing super-network so that every member works: each step trains the max member on the labels
and the min member plus N random members on the max member's soft outputs. SGD-Nesterov, cosine schedule with
warm-up, channels-last. Writes OUT/last.safetensors every --checkpoint-every steps (atomically) and
OUT/final.safetensors at the end.

Every option is checked before any work. --out must be a new or empty folder, unless --resume (continue the
run there) or --overwrite: the new run then trains into a fresh folder beside OUT that replaces OUT whole
when the new run writes its first checkpoint, so OUT holds the old run or the new one, never a mix. Ctrl-C
writes a checkpoint of the steps done (whatever the step) that --resume continues, and exits 130.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from .. import validate
from ..errors import UserError
from .common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", __doc__, "train a super-network (sandwich rule, in-place distillation)",
                    ["dynadnn train --data animals --minutes 3 --out runs/quick",
                     "dynadnn train --data animals --minutes 3 --out runs/quick --resume",
                     "dynadnn train --data imagefolder:/data/imagenet --preset ofa_mbv3_w1.0 --epochs 5 --out runs/in",
                     "torchrun --nproc_per_node 2 -m dynadnn train --data animals --epochs 1 --out runs/ddp"])
    p.add_argument("--data", default="animals", help="animals (default), digits or imagefolder:PATH")
    p.add_argument("--preset", default="tiny", help="search-space preset or JSON file (default: tiny)")
    p.add_argument("--out", required=True, help="output directory for checkpoints")
    budget = p.add_argument_group("budget (one of)")
    budget.add_argument("--minutes", type=float, help="wall-clock budget; the schedule length is fixed from the "
                                                      "speed of the first 10 steps")
    budget.add_argument("--epochs", type=float, help="number of passes over the training split")
    budget.add_argument("--steps", type=int, help="number of optimizer steps (fully reproducible)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size (default 64)")
    p.add_argument("--lr", type=float, default=0.15, help="peak learning rate (default 0.15)")
    p.add_argument("--weight-decay", type=float, default=5e-5, help="on conv/linear weights only (default 5e-5)")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--n-random", type=int, default=None,
                   help="random members per step besides max and min (default 1; 0 for --minutes under 10, where "
                        "each extra member would cost a third of the few steps there are)")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--no-sandwich", action="store_true", help="train the max member only (ablation)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random shifts/rotations/flips (default: on, except for budgets under 10 minutes or 3 "
                        "epochs, where the model is still far from fitting the data: a 3-minute run reached "
                        "89.3%% without against 84.5%% with)")
    p.add_argument("--dropout", type=float, default=None, help="classifier dropout (default: the preset's)")
    p.add_argument("--micro-batches", type=int, default=1, help="split each batch and accumulate gradients "
                                                               "(less memory; BN statistics per micro-batch)")
    p.add_argument("--shared-resolution", action="store_true",
                   help="train every member of a step at one resolution drawn for the step (OFA), instead of max at "
                        "the largest and min at the smallest (BigNAS, the default)")
    p.add_argument("--init", help="start from this checkpoint's weights (.safetensors, OFA .pth or zoo:NAME), e.g. to "
                                   "fine-tune a shipped model with a different recipe; the preset must match")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads, at most the CPUs this process may use (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda under torchrun if available)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run (or other files) already in OUT: the old folder is replaced whole once the "
                        "new run's first checkpoint is written (Ctrl-C before that keeps the old run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-eval", action="store_true", help="skip the calibrated test of max/min at the end")
    p.set_defaults(func=run)


def _recipe(args: argparse.Namespace):
    """The run's Recipe from the flags, every value checked (nothing is loaded or started yet)."""
    from ..train import Recipe

    if args.minutes is None and args.epochs is None and args.steps is None:
        raise UserError("give a budget: --minutes, --epochs or --steps")
    if args.n_random is None:
        args.n_random = 0 if args.minutes is not None and args.minutes < 10 else 1
    if args.augment is None:
        args.augment = not ((args.minutes is not None and args.minutes < 10) or
                            (args.epochs is not None and args.epochs < 3))
    return Recipe(preset=args.preset, data=args.data, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                  weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, n_random=args.n_random,
                  warmup_epochs=args.warmup_epochs, epochs=args.epochs, minutes=args.minutes, steps=args.steps,
                  augment=args.augment, sandwich=not args.no_sandwich, dropout=args.dropout,
                  micro_batches=args.micro_batches, init=args.init,
                  shared_resolution=args.shared_resolution).validate()


def run(args: argparse.Namespace) -> int:
    import torch

    from ..train import check_out, distributed, train

    threads = None if args.threads is None else validate.threads(args.threads, "threads")
    recipe = _recipe(args)
    validate.count(args.checkpoint_every, "checkpoint_every", low=0)
    if args.device is not None:
        validate.device(args.device, "device")
    check_out(args.out, args.resume, args.overwrite)  # before torch.distributed starts
    if threads is not None:
        torch.set_num_threads(threads)
    argv = sys.argv[sys.argv.index("train"):] if "train" in sys.argv else ["train"]
    with distributed(args.device) as device:
        result = train(recipe, args.out, resume=args.resume, overwrite=args.overwrite,
                       checkpoint_every=args.checkpoint_every, progress=not args.no_progress, device=device,
                       command=" ".join(shlex.quote(a) for a in ["dynadnn"] + argv), evaluate_at_end=not args.no_eval)
    if int(os.environ.get("RANK", "0")) == 0:
        m = result.metrics
        parts = [f"{result.steps} steps", f"{result.images_per_s:.0f} img/s", f"loss {result.last_loss:.3f}"]
        parts += [f"{k} {v:.2f}%" for k, v in m.items() if k.startswith("top1_")]
        print("trained: " + ", ".join(parts) + (f"; checkpoint {result.checkpoint}" if result.checkpoint else ""))
    return 0
