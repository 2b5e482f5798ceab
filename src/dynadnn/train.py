"""Super-network training: the sandwich rule with in-place distillation.

Each step trains several members of the weight-shared super-network on the same batch (BigNAS/OFA):

- the max member, at the largest resolution, on the labels (cross-entropy with label smoothing);
- the min member, at the smallest resolution, and `n_random` random members, at a resolution drawn for the
  step, on the max member's soft outputs (in-place distillation: the largest network teaches the others).

Without the sandwich (training only the max member) or without per-member BN re-calibration at evaluation,
small members collapse; see BENCHMARKS.md. All members' losses are summed into one backward pass, so a step is
one forward/backward of a module and DistributedDataParallel sees an ordinary step (`torchrun` runs one rank per
process; every rank draws the same members because they are seeded by the step number).

Determinism: every random choice of step `s` (members, resolution, dropout) is seeded by (seed, s), and the
data order by (seed, epoch), so a resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from .data import load_dataset, resize_batch
from .errors import CheckpointError, UserError
from .fileio import atomic_write, check_replaceable, read_safetensors, replace_dir
from .space import Arch, SearchSpace, load_space
from .supernet import SuperNet, load_checkpoint, save_checkpoint
from .supernet.checkpoint import RUN_CHECKPOINTS, resolve_checkpoint_path
from .validate import MAX_SECONDS, count, number
from .validate import device as check_device

MAX_EPOCHS = 100_000  # more is a typo: a run that would not end
MAX_STEPS = 1_000_000_000
MAX_RANDOM_MEMBERS = 64  # random members per step besides max and min (each costs a forward/backward)


@dataclass
class Recipe:
    """Everything that decides what a training run computes (stored in every checkpoint)."""

    preset: str = "tiny"
    data: str = "animals"
    seed: int = 0
    batch_size: int = 64  # global batch (split across ranks)
    lr: float = 0.15
    momentum: float = 0.9
    weight_decay: float = 5e-5
    label_smoothing: float = 0.1
    n_random: int = 2
    warmup_epochs: float = 1.0
    epochs: float | None = None
    minutes: float | None = None
    steps: int | None = None  # fixed when given; else from epochs, or from minutes after measuring speed
    augment: bool = True
    sandwich: bool = True  # False: train the max member only (the ablation)
    dropout: float | None = None  # None: the preset's
    channels_last: bool = True
    micro_batches: int = 1  # split each batch, accumulate gradients (memory; or to mirror per-rank BN of DDP)
    init: str | None = None  # start from this checkpoint's weights (fine-tuning), not from random ones
    shared_resolution: bool = False  # all members of a step at one r (OFA) instead of max at largest, min at smallest

    def __post_init__(self) -> None:
        self.validate(need_budget=False)

    def validate(self, need_budget: bool = True) -> "Recipe":
        """Check every field (type, range, finiteness); a one-line `UserError` naming the field (`lr: ...`),
        which the CLI shows as its flag (`--lr: ...`). `need_budget`: one of steps, epochs, minutes is set."""
        for name in ("preset", "data"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise UserError(f"{name}: expected a non-empty string, got {getattr(self, name)!r}")
        count(self.seed, "seed", low=0, high=2**31 - 1)
        count(self.batch_size, "batch_size", low=1, high=1_000_000)
        count(self.micro_batches, "micro_batches", low=1, high=self.batch_size)
        count(self.n_random, "n_random", low=0, high=MAX_RANDOM_MEMBERS)
        number(self.lr, "lr", low=0, low_open=True, high=10)
        number(self.momentum, "momentum", low=0, high=1, high_open=True)
        number(self.weight_decay, "weight_decay", low=0, high=1, high_open=True)
        number(self.label_smoothing, "label_smoothing", low=0, high=1)
        number(self.warmup_epochs, "warmup_epochs", low=0, high=MAX_EPOCHS)
        if self.dropout is not None:
            number(self.dropout, "dropout", low=0, high=1, high_open=True)
        if self.epochs is not None:
            number(self.epochs, "epochs", low=0, low_open=True, high=MAX_EPOCHS)
        if self.minutes is not None:
            number(self.minutes, "minutes", low=0, low_open=True, high=MAX_SECONDS / 60)
        if self.steps is not None:
            count(self.steps, "steps", low=1, high=MAX_STEPS)
        for name in ("augment", "sandwich", "channels_last", "shared_resolution"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if self.init is not None and (not isinstance(self.init, str) or not self.init):
            raise UserError(f"init: expected a checkpoint path, got {self.init!r}")
        if need_budget and self.steps is None and self.epochs is None and self.minutes is None:
            raise UserError("give a budget: --minutes, --epochs or --steps")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    steps: int
    images: int
    seconds: float
    images_per_s: float
    last_loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


# ----------------------------------------------------------------------------------------------------
# Pure pieces
# ----------------------------------------------------------------------------------------------------
def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero at `total`."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * base * (1 + math.cos(math.pi * t))


def step_members(space: SearchSpace, seed: int, step: int, n_random: int, sandwich: bool = True,
                 shared_resolution: bool = False) -> list[Arch]:
    """The members trained at `step`: max, min, then random ones. Resolutions: by default max at the
    largest r and min at the smallest (BigNAS), random ones at one r drawn for the step; with
    `shared_resolution` every member of the step runs at that one r (OFA), so each member, min and max
    included, sees every resolution. A pure function of (seed, step): every rank and every resumed run
    draws the same."""
    if not sandwich:
        return [space.max_arch()]
    rng = random.Random(seed * 1_000_003 + step)
    r = rng.choice(space.resolutions)
    if shared_resolution:
        return [space.max_arch(r), space.min_arch(r)] + [space.sample(rng, r) for _ in range(n_random)]
    return [space.max_arch(), space.min_arch()] + [space.sample(rng, r) for _ in range(n_random)]


def param_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only; none on BN parameters, biases, or kernel matrices."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (decay if p.ndim == 4 or (p.ndim == 2 and "kernel_transforms" not in name) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class SandwichLoss(nn.Module):
    """One step's loss over all members, as one module call (what DDP wraps)."""

    def __init__(self, net: SuperNet, label_smoothing: float, channels_last: bool):
        super().__init__()
        self.net, self.label_smoothing, self.channels_last = net, label_smoothing, channels_last

    def forward(self, x: Tensor, y: Tensor, members: list[Arch]) -> tuple[Tensor, Tensor]:
        total, teacher = None, None
        for i, arch in enumerate(members):
            xi = resize_batch(x, arch.r)
            if self.channels_last:
                xi = xi.contiguous(memory_format=torch.channels_last)
            self.net.set_active(arch)
            logits = self.net(xi)
            if i == 0:
                loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
                teacher = F.softmax(logits.detach(), dim=1)
                max_logits = logits.detach()
            else:  # in-place distillation: soft cross-entropy against the max member
                loss = -(teacher * F.log_softmax(logits, dim=1)).sum(1).mean()
            total = loss if total is None else total + loss
        return total, max_logits


# ----------------------------------------------------------------------------------------------------
# Checkpoints: the model file (loadable anywhere) + a training-state file (optimizer, progress)
# ----------------------------------------------------------------------------------------------------
def state_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.stem + ".train-state.safetensors")


def save_training_state(path: Path, optimizer: torch.optim.Optimizer, step: int) -> None:
    tensors = {}
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{gi}.{pi}"] = buf.detach().contiguous().cpu()
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"step": str(step)}))


def load_training_state(path: Path, optimizer: torch.optim.Optimizer, step: int) -> bool:
    """Restore momentum buffers if the state file belongs to the same step; False (and a warning) if not."""
    if not path.is_file():
        warnings.warn(f"{path}: missing; resuming with fresh optimizer momentum", stacklevel=2)
        return False
    raw = read_safetensors(path, CheckpointError, tensors=False)[1].get("step", "-1")
    if not raw.lstrip("-").isdigit():
        raise CheckpointError(f"{path}: metadata field 'step': expected an integer, got {raw[:40]!r}")
    saved = int(raw)
    if saved != step:
        warnings.warn(f"{path}: is from step {saved}, the checkpoint from {step}; fresh momentum", stacklevel=2)
        return False
    tensors = read_safetensors(path, CheckpointError)[0]
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            buf = tensors.get(f"momentum.{gi}.{pi}")
            if buf is not None and tuple(buf.shape) != tuple(p.shape):
                raise CheckpointError(f"{path}: 'momentum.{gi}.{pi}' has shape {list(buf.shape)}, the parameter "
                                      f"{list(p.shape)}")
            if buf is not None:
                optimizer.state[p]["momentum_buffer"] = buf.to(p.device, p.dtype).clone()
    return True


def _shown(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 120 else text[:60] + "..." + text[-40:]


def check_out(out: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse an `out` that cannot take this run, before any work (this creates nothing): a file, a folder
    already holding a run or other files (unless `overwrite`), no checkpoint to `resume`, no write access."""
    if resume and overwrite:
        raise UserError("overwrite: cannot be combined with --resume (continue the run, or replace it)")
    if not isinstance(out, (str, Path)) or not str(out):
        raise UserError(f"out: expected a folder for the run, got {out!r}")
    out = Path(out)
    try:
        if overwrite:
            check_replaceable(out, UserError)
        if out.exists() and not out.is_dir():
            raise UserError(f"out: {_shown(out)} exists and is not a directory (expected a folder for the run)")
        if resume and not (out / "last.safetensors").is_file():
            raise UserError(f"resume: no checkpoint to continue at {_shown(out / 'last.safetensors')}")
        busy = out.is_dir() and any(out.iterdir())
        if busy and not resume and not overwrite:
            held = "a training run" if any((out / n).is_file() for n in RUN_CHECKPOINTS) else "other files"
            raise UserError(f"out: {_shown(out)} already holds {held}; pass --resume to continue it, --overwrite "
                            "to replace the folder, or choose a new one")
        here = out if resume or not busy else out.parent
        anchor = next(p for p in [here, *here.parents] if p.exists())
        if not anchor.is_dir():
            raise UserError(f"out: {_shown(anchor)} is not a directory")
        if not os.access(anchor, os.W_OK | os.X_OK):
            raise UserError(f"out: {_shown(anchor)} is not writable")
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise UserError(f"out: {_shown(out)}: cannot use it as the output folder ({_why(exc)})") from None


def _why(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _make_out(out: Path, resume: bool, overwrite: bool) -> tuple[Path, Path | None, bool]:
    """(the folder to write into, the folder it replaces at the first checkpoint or None, whether created).
    An overwrite writes into a fresh folder beside `out`, swapped in whole when its first checkpoint exists."""
    created = False
    try:
        if not resume and overwrite and out.is_dir() and any(out.iterdir()):
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name[:32]}.", suffix=".partial", dir=out.parent))
            return staging, out, True
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # can a file be written there?
            pass
        return out, None, created
    except (OSError, ValueError) as exc:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise UserError(f"out: {_shown(out)}: cannot write the training run here ({_why(exc)})") from None


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------
@contextmanager
def distributed(device: str | None) -> Iterator[str]:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on CUDA, else Gloo) for the block and
    yield this rank's device; otherwise yield `device` (default cpu)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield device or "cpu"
        return
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        yield device
        torch.distributed.barrier()  # no rank tears the group down while another still uses it
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass
class _Run:
    """A training run in progress: what it trains and with what, where it stands, and where it writes."""

    recipe: Recipe
    space: SearchSpace
    net: SuperNet
    data: Any
    model: nn.Module  # the SandwichLoss, wrapped in DistributedDataParallel when there are several ranks
    optimizer: torch.optim.Optimizer
    out: Path | None
    command: str | None
    device: str
    rank: int
    world: int
    steps_per_epoch: int
    warmup: int
    step: int = 0  # steps done, those of the interrupted run included when resumed
    spent_before: float = 0.0  # training seconds of the interrupted run
    budget_s: float | None = None  # a --minutes budget (when no step count is fixed)
    t0: float = 0.0  # perf_counter() when this process started the loop
    images: int = 0
    last_loss: float = float("nan")
    losses: list[float] = field(default_factory=list)
    bar: Any = None  # a rich Progress on rank 0, or None
    task: Any = None
    replaces: Path | None = None  # an overwrite: `out` is a fresh folder that replaces this one at the first save
    created: bool = False  # `out` was made by this run
    saved_step: int = -1  # the step of the newest checkpoint in `out`

    @property
    def per_rank(self) -> int:
        return self.recipe.batch_size // self.world

    def elapsed(self) -> float:
        """Training seconds so far, the interrupted run's included."""
        return self.spent_before + time.perf_counter() - self.t0

    def meta(self, step: int, metrics: dict) -> dict:
        data, recipe = self.data, self.recipe
        return {"data": recipe.data, "dataset": data.describe(), "recipe": recipe.to_dict(), "seed": recipe.seed,
                "steps": step, "metrics": metrics, "command": self.command or " ".join(sys.argv),
                "world_size": self.world, "norm": {"mean": data.mean, "std": data.std},
                "train_seconds": round(self.elapsed(), 3)}

    def save(self, step: int, metrics: dict, name: str = "last.safetensors") -> Path | None:
        """Write checkpoint `out/name` and its training state (rank 0 only; None when nothing is written)."""
        if self.out is None or self.rank != 0:
            return None
        path = self.out / name
        save_training_state(state_path(path), self.optimizer, step)
        save_checkpoint(self.net, path, self.meta(step, metrics))
        self.saved_step = step
        if self.replaces is not None:  # the first checkpoint of an overwrite: the new folder replaces the old
            replace_dir(self.out, self.replaces, UserError)
            self.out, self.replaces = self.replaces, None
            path = self.out / name
        return path

    def discard(self) -> None:
        """After a failure: remove what this run made that holds no checkpoint (an overwrite's new folder, an
        `out` it created that is still empty); an earlier run in `out` stays as it was."""
        if self.out is None or self.rank != 0:
            return
        if self.replaces is not None:
            shutil.rmtree(self.out, ignore_errors=True)
        elif self.created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def save_interrupted(self) -> None:
        """On Ctrl-C: a checkpoint of the steps done since the last one (atomic), so that resume continues."""
        if self.out is None or self.rank != 0 or self.step <= max(0, self.saved_step):
            return
        path = self.save(self.step, {"train_loss": _recent_loss(self.losses)})
        print(f"interrupted at step {self.step}: wrote {path}; continue with --resume", file=sys.stderr, flush=True)


def train(recipe: Recipe, out: str | Path | None, *, resume: bool = False, overwrite: bool = False,
          checkpoint_every: int = 200, evaluate_at_end: bool = True, progress: bool = True,
          command: str | None = None, net: SuperNet | None = None, data=None, device: str = "cpu",
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train a super-network by the sandwich rule. Writes `out/last.safetensors` every `checkpoint_every`
    steps and at the end (and `out/final.safetensors`), each with `out/<name>.train-state.safetensors`.

    Every argument is checked before any work (one-line `UserError`s naming the parameter). `out` must be
    new or empty, unless `resume` (continue from its last.safetensors) or `overwrite`: the new run then writes
    into a fresh folder beside `out` that replaces it whole once the new run's first checkpoint exists, so an
    interrupted overwrite leaves either the old run or the new one, never a mix. Ctrl-C (KeyboardInterrupt)
    at any step writes a checkpoint of the steps done, so that `resume` continues, then propagates."""
    recipe.validate()
    count(checkpoint_every, "checkpoint_every", low=0)
    device = check_device(device, "device")
    if out is not None:
        check_out(out, resume, overwrite)
    run = _start_run(recipe, out, resume=resume, overwrite=overwrite, command=command, net=net, data=data,
                     device=device)
    try:
        _start_progress(run, progress and run.rank == 0)
        try:
            _loop(run, checkpoint_every, on_step)
        finally:
            if run.bar:
                run.bar.stop()
        seconds = time.perf_counter() - run.t0
        metrics = _final_metrics(run, seconds, evaluate_at_end)
        path = None
        if run.out is not None and run.rank == 0:
            path = run.save(run.step, metrics)
            run.save(run.step, metrics, "final.safetensors")
    except KeyboardInterrupt:
        run.save_interrupted()
        run.discard()
        raise
    except BaseException:
        run.discard()
        raise
    return TrainResult(run.step, run.images, seconds, run.images / max(1e-9, seconds), run.last_loss, metrics, path)


# --- set-up and resume ------------------------------------------------------------------------------
def _start_run(recipe: Recipe, out: str | Path | None, *, resume: bool, overwrite: bool, command: str | None,
               net: SuperNet | None, data, device: str) -> _Run:
    """Check the request, build (or resume) the network, the data, the loss module and the optimizer; make
    the output folder last, once everything else has been accepted."""
    rank, world = _dist()
    space = load_space(recipe.preset)
    if recipe.dropout is not None:
        space = SearchSpace(**{**space.__dict__, "dropout": recipe.dropout})
    if recipe.batch_size % (world * recipe.micro_batches):
        raise UserError(f"batch_size: {recipe.batch_size} must be divisible by {world} rank(s) x "
                        f"{recipe.micro_batches} micro-batch(es)")
    if recipe.init and net is None and not resume:
        resolve_checkpoint_path(recipe.init)  # a missing file is refused before the data is loaded
    out = Path(out) if out is not None else None
    start_step, spent_before = 0, 0.0
    ckpt = out / "last.safetensors" if out is not None else None
    if resume:
        net, start_step, spent_before = _resume(ckpt, recipe, space, rank)
    data = data or load_dataset(recipe.data, image_size=max(space.resolutions), in_channels=space.in_channels)
    steps_per_epoch = _check_data(recipe, space, data)
    net = _place_net(recipe, space, net, device)
    warmup = _fix_budget(recipe, steps_per_epoch)
    model = module = SandwichLoss(net, recipe.label_smoothing, recipe.channels_last)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(module, find_unused_parameters=True, bucket_cap_mb=256,
                                                    device_ids=None if device == "cpu" else [torch.device(device).index])
    optimizer = torch.optim.SGD(param_groups(net, recipe.weight_decay), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=True)
    if resume:
        load_training_state(state_path(ckpt), optimizer, start_step)
    replaces, created = None, False
    if out is not None and rank == 0:
        out, replaces, created = _make_out(out, resume, overwrite)
    budget_s = recipe.minutes * 60 if recipe.minutes and recipe.steps is None else None
    return _Run(recipe, space, net, data, model, optimizer, out, command, device, rank, world, steps_per_epoch,
                warmup, step=start_step, spent_before=spent_before, budget_s=budget_s, t0=time.perf_counter(),
                replaces=replaces, created=created, saved_step=start_step if resume else -1)


def _resume(ckpt: Path | None, recipe: Recipe, space: SearchSpace, rank: int) -> tuple[SuperNet, int, float]:
    """The interrupted run's network, step and training seconds from `ckpt`; keeps its step count."""
    if ckpt is None or not ckpt.is_file():
        raise UserError(f"--resume: no checkpoint at {ckpt}")
    net, saved_meta = load_checkpoint(ckpt)  # its metadata checked there (`check_meta`: field types, steps >= 0)
    if saved_meta.get("preset") != space.name:
        raise CheckpointError(f"--resume {ckpt}: checkpoint is for preset '{saved_meta.get('preset')}', "
                              f"this run trains '{space.name}'")
    if recipe.dropout is not None:
        net.space = space
    start_step = int(saved_meta.get("steps", 0))
    saved = saved_meta.get("recipe") or {}
    if saved.get("steps") is not None:  # keep the schedule of the interrupted run
        recipe.steps = count(saved["steps"], f"{ckpt}: metadata field 'recipe.steps'", low=1, high=MAX_STEPS,
                             error=CheckpointError)
    spent_before = float(saved_meta.get("train_seconds", 0.0))
    if rank == 0:
        print(f"resuming {ckpt} from step {start_step}", flush=True)
    return net, start_step, spent_before


def _check_data(recipe: Recipe, space: SearchSpace, data) -> int:
    """Refuse data the network cannot take (channels, classes) or too little of it for one batch; return
    the steps per epoch."""
    if data.in_channels != space.in_channels or data.n_classes != space.n_classes:
        raise UserError(f"data: {recipe.data}: {data.in_channels} channel(s) and {data.n_classes} classes, but "
                        f"preset '{space.name}' expects {space.in_channels} and {space.n_classes}")
    steps_per_epoch = data.n_train // recipe.batch_size
    if steps_per_epoch < 1:
        raise UserError(f"batch_size: {recipe.batch_size} is more than the {data.n_train} training images of "
                        f"{recipe.data}")
    return steps_per_epoch


def _place_net(recipe: Recipe, space: SearchSpace, net: SuperNet | None, device: str) -> SuperNet:
    """The network (given, resumed, from --init, or seeded) on `device` in train mode."""
    if net is None and recipe.init:
        net = _initial_net(recipe.init, space)
    net = net or _seeded_net(space, recipe.seed)
    net.to(device)
    if recipe.channels_last:
        net.to(memory_format=torch.channels_last)
    net.train()
    return net


def _fix_budget(recipe: Recipe, steps_per_epoch: int) -> int:
    """Turn --epochs into a step count (in `recipe`; `Recipe.validate` has required a budget); return the
    warm-up steps."""
    if recipe.steps is None and recipe.epochs is not None:
        recipe.steps = max(1, int(round(recipe.epochs * steps_per_epoch)))
    return int(recipe.warmup_epochs * steps_per_epoch)


# --- the loop ---------------------------------------------------------------------------------------
def _loop(run: _Run, checkpoint_every: int, on_step: Callable[[int, float], None] | None) -> None:
    """Epoch after epoch, one sandwich step per batch, until the step count or the time budget is reached."""
    epoch = run.step // run.steps_per_epoch
    while True:
        steps_before = run.step
        for x, y in _epoch_batches(run, epoch):
            schedule = _schedule(run)
            if schedule is None:
                return
            lr, frac = schedule
            loss = _sandwich_step(run, x, y, lr)
            if on_step:
                on_step(run.step, loss)
            _show_progress(run, lr, frac)
            if _checkpoint_due(run, checkpoint_every):
                run.save(run.step, {"train_loss": _recent_loss(run.losses)})
                run.net.train()
        if run.step == steps_before:  # every image of the epoch was unreadable: it would loop for ever
            raise UserError(f"data: {run.recipe.data}: an epoch gave no usable batch "
                            f"({getattr(run.data, 'skipped', 0)} image(s) skipped as corrupt or unreadable)")
        epoch += 1


def _epoch_batches(run: _Run, epoch: int):
    """This rank's batches of `epoch`, in the order seeded by (seed, epoch); those already trained skipped."""
    gen = torch.Generator().manual_seed(run.recipe.seed * 7919 + epoch)
    batches = run.data.train_batches(run.per_rank, gen, run.recipe.augment, shard=(run.rank, run.world))
    for _ in range(run.step - epoch * run.steps_per_epoch):  # resumed mid-epoch: replay the order, skip work
        next(batches, None)
    return batches


def _schedule(run: _Run) -> tuple[float, float | None] | None:
    """The learning rate of the next step and the fraction of a time budget spent (None without one);
    None when the run is done."""
    recipe = run.recipe
    if recipe.steps is not None and run.step >= recipe.steps:
        return None
    if run.budget_s is None:
        return lr_at(run.step, recipe.steps, run.warmup, recipe.lr), None
    # wall-clock budget: the cosine follows the fraction of the budget spent (rank 0's clock)
    frac = _agree(run.elapsed() / run.budget_s, run.world)
    if frac >= 1.0:
        return None
    return lr_by_time(run.step, frac, run.warmup, recipe.lr), frac


def _sandwich_step(run: _Run, x: Tensor, y: Tensor, lr: float) -> float:
    """One optimizer step of the sandwich rule on batch (x, y) at learning rate `lr`; returns its loss."""
    recipe, optimizer = run.recipe, run.optimizer
    for g in optimizer.param_groups:
        g["lr"] = lr
    torch.manual_seed(recipe.seed * 1_000_003 + run.step)  # dropout: same on every run
    members = step_members(run.space, recipe.seed, run.step, recipe.n_random, recipe.sandwich,
                           recipe.shared_resolution)
    x, y = x.to(run.device), y.to(run.device)
    optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for xm, ym in zip(x.chunk(recipe.micro_batches), y.chunk(recipe.micro_batches)):
        part, _ = run.model(xm, ym, members)
        (part / recipe.micro_batches).backward()
        loss = loss + part.detach() / recipe.micro_batches
    with _ctrl_c_held():  # the weights and the step count change together: a checkpoint never sees half
        optimizer.step()
        run.step += 1
        run.images += x.shape[0] * run.world
        run.last_loss = float(loss.detach())
        run.losses.append(run.last_loss)
    return run.last_loss


@contextmanager
def _ctrl_c_held():
    """Hold SIGINT back for the block, then deliver it (to the handler there was) once the block is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if caught and callable(old):
            old(signal.SIGINT, None)


def _checkpoint_due(run: _Run, every: int) -> bool:
    """A periodic checkpoint after this step? (Not after the last: train() writes that one.)"""
    return bool(run.out is not None and every and run.step % every == 0 and
                (run.recipe.steps is None or run.step < run.recipe.steps))


def _recent_loss(losses: list[float]) -> float:
    """The mean loss of the last 50 steps."""
    return sum(losses[-50:]) / max(1, len(losses[-50:]))


# --- progress and evaluation ------------------------------------------------------------------------
def _start_progress(run: _Run, enabled: bool) -> None:
    run.bar = _progress(enabled)
    if run.bar:
        run.task = run.bar.add_task("train", total=run.recipe.steps or 100)
        run.bar.start()
        run.bar.update(run.task, completed=run.step if run.budget_s is None else 100 * run.spent_before / run.budget_s)


def _show_progress(run: _Run, lr: float, frac: float | None) -> None:
    if not run.bar:
        return
    rate = run.images / max(1e-9, time.perf_counter() - run.t0)
    run.bar.update(run.task, completed=run.step if run.budget_s is None else 100 * frac,
                   description=f"train loss {run.last_loss:.3f} {rate:.0f} img/s")
    if not run.bar.console.is_terminal and run.step % 25 == 0:  # a log file still sees progress
        recent = run.losses[-25:]
        print(f"step {run.step}/{run.recipe.steps} loss {sum(recent) / len(recent):.4f} "
              f"lr {lr:.4f} {rate:.1f} img/s {time.perf_counter() - run.t0:.0f}s", flush=True)


def _final_metrics(run: _Run, seconds: float, evaluate_at_end: bool) -> dict[str, float]:
    """The recent training loss, the max and min members' top-1 (calibrated, on rank 0) and the speed."""
    from .evaluate import evaluate_members

    metrics: dict[str, float] = {"train_loss": _recent_loss(run.losses)}
    if evaluate_at_end and run.rank == 0:
        run.net.eval()
        for row in evaluate_members(run.net, run.data, [("max", run.space.max_arch()), ("min", run.space.min_arch())]):
            metrics[f"top1_{row['name']}"] = row["top1"]
        run.net.train()
    metrics["images_per_s"] = run.images / max(1e-9, seconds)
    if run.world > 1:
        metrics["ranks_identical"] = float(ranks_identical(run.net))
    return metrics


def ranks_identical(net: nn.Module) -> bool:
    """True if every rank holds bit-identical parameters (DDP keeps them in step; this checks it)."""
    flat = torch.cat([p.detach().flatten().double().cpu() for p in net.parameters()])
    digest = torch.tensor([float(flat.sum()), float((flat * torch.arange(flat.numel(), dtype=torch.float64)).sum())])
    gathered = [torch.zeros_like(digest) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, digest)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def lr_by_time(step: int, frac: float, warmup: int, base: float) -> float:
    """`--minutes` schedule: warm-up ends after `warmup` steps or 5 % of the budget, whichever comes first;
    then cosine over the fraction of the wall-clock budget spent."""
    warm = min(1.0, max((step + 1) / max(1, warmup), frac / 0.05))
    return base * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _agree(value: float, world: int) -> float:
    """All ranks must follow the same schedule: take rank 0's value."""
    if world > 1:
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.broadcast(t, 0)
        value = float(t)
    return value


def _initial_net(init: str, space: SearchSpace) -> SuperNet:
    net, meta = load_checkpoint(init)
    if net.space.name != space.name:
        raise CheckpointError(f"--init {init}: checkpoint is for preset '{net.space.name}', this run trains '{space.name}'")
    net.space = space  # (a --dropout override)
    return net


def _seeded_net(space: SearchSpace, seed: int) -> SuperNet:
    torch.manual_seed(seed)
    return SuperNet(space)


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False)
