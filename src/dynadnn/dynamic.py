"""A dynamic network: the super-network plus K warm resident members, switched by a pointer swap.

Switching sub-networks the way Dynamic-OFA's demo does (a new process that rebuilds the super-network,
loads the weights and extracts the member) costs seconds. Here every member is prepared once, at load:
extracted with its own calibrated BN statistics, BN folded into the convolutions, laid out channels-last,
compiled to a frozen TorchScript graph when that works (it fuses conv+activation and skips Python's per-
module dispatch, which dominates batch-1 latency on a CPU) and warmed up. `switch` then only replaces one
reference, and `predict` reads that reference once, so a switch from another thread takes effect at the
next inference and never mixes two members within one.

    dyn = DynamicNetwork(supernet, archs, bn_stats=calibrate_members(supernet, archs, batches))
    dyn.switch(2)                 # or dyn.switch(arch)
    logits = dyn.predict(images)  # resized to the active member's resolution if needed

`mode="inplace"` keeps members as prepared plans on the super-network's (sliced, BN-folded) tensors
instead, switching with `SuperNet.use_plan`; it needs no extraction but runs the functional path.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .data import resize_batch
from .errors import UserError
from .evaluate import calibrate_members
from .space import Arch
from .supernet import Plan, StaticNet, SuperNet
from .supernet.network import run_plan
from .supernet.plan import BlockPlan, Conv

BACKENDS = ("auto", "torchscript", "eager")
MODES = ("resident", "inplace")
_CL = torch.channels_last


@dataclass(frozen=True, eq=False)
class Member:
    """One resident sub-network: its architecture, the BN statistics it was calibrated with, and its
    runnable form (`module`: a frozen TorchScript graph, a BN-folded `StaticNet`, or a plan runner)."""

    arch: Arch
    bn_stats: Mapping[str, Tensor] | None
    module: Callable[[Tensor], Tensor]
    backend: str  # "torchscript", "eager" or "inplace"
    channels_last: bool
    in_channels: int
    plan: Plan | None = None  # in-place members only
    extract_ms: float = 0.0  # extraction + BN folding (or plan preparation), for reports
    build_ms: float = 0.0  # all of the above + layout + compilation + warm-up

    @property
    def resolution(self) -> int:
        return self.arch.r

    def prepare(self, x: Tensor) -> Tensor:
        """Shape an image batch for this member: NCHW (a single CHW image is accepted), resized
        (bilinear) to the member's resolution, in the member's memory layout."""
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise UserError(f"input: expected images shaped (N, {self.in_channels}, H, W) or ({self.in_channels}, H, W), "
                            f"got {tuple(x.shape)}")
        x = resize_batch(x, self.arch.r)  # bilinear, antialiased when shrinking: as in training
        if self.channels_last:
            x = x.contiguous(memory_format=_CL)
        return x

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.module(self.prepare(x))


# ----------------------------------------------------------------------------------------------------
# Building members
# ----------------------------------------------------------------------------------------------------
def _example(arch: Arch, in_channels: int, channels_last: bool) -> Tensor:
    x = torch.randn(1, in_channels, arch.r, arch.r, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=_CL) if channels_last else x


def compile_static(static: StaticNet, example: Tensor) -> torch.jit.ScriptModule:
    """Trace and freeze: weights become constants, conv+bias+activation patterns fuse, and a forward
    is one graph call instead of ~150 Python module calls. TorchScript is deprecated upstream but still
    the cheapest ahead-of-time graph for a CPU batch-1 model; callers fall back to eager if it fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return torch.jit.freeze(torch.jit.trace(static, example, check_trace=False))


def _warm(fn: Callable[[Tensor], Tensor], x: Tensor, runs: int) -> Tensor:
    with torch.inference_mode():
        out = fn(x)
        for _ in range(runs - 1):
            out = fn(x)
    return out


def build_member(supernet: SuperNet, arch: Arch, bn_stats: Mapping[str, Tensor] | None = None, *,
                 backend: str = "auto", channels_last: bool = True, warmup: int = 6) -> Member:
    """Extract `arch` as a standalone static model (with `bn_stats` if given), fold BN, convert the layout,
    compile it (backend "auto" = TorchScript if it compiles and matches the eager model, else eager) and
    run it `warmup` times so the first real inference does not pay for lazy initialisation (a frozen
    graph's first calls profile and optimise it: 5-15x a steady call). The graph is warmed at batch 1; the
    first call at another batch size pays a smaller re-profiling cost once."""
    if backend not in BACKENDS:
        raise UserError(f"backend '{backend}': expected one of {', '.join(BACKENDS)}")
    t0 = time.perf_counter()
    space = supernet.space
    static = supernet.extract(arch, bn_stats=bn_stats).fuse()
    extract_ms = (time.perf_counter() - t0) * 1e3
    if channels_last:
        static = static.to(memory_format=_CL)
    example = _example(arch, space.in_channels, channels_last)
    module: Callable[[Tensor], Tensor] = static
    used = "eager"
    if backend in ("auto", "torchscript"):
        try:
            compiled = compile_static(static, example)
            with torch.inference_mode():
                want, got = static(example), _warm(compiled, example, 3)
            tol = 1e-4 * max(1.0, float(want.abs().max()))
            if not torch.allclose(want, got, rtol=1e-4, atol=tol):
                raise RuntimeError(f"compiled member differs from eager by {float((want - got).abs().max()):.3g}")
            module, used = compiled, "torchscript"
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eager
            if backend == "torchscript":
                raise RuntimeError(f"TorchScript compilation of member {arch.short()} failed: {exc}") from exc
            warnings.warn(f"member {arch.short()}: TorchScript unavailable ({exc}); running it eagerly", RuntimeWarning)
    _warm(module, example, warmup)
    return Member(arch, bn_stats, module, used, channels_last, space.in_channels,
                  extract_ms=extract_ms, build_ms=(time.perf_counter() - t0) * 1e3)


def _plan_channels_last(plan: Plan) -> Plan:
    def conv(c: Conv | None) -> Conv | None:
        return None if c is None else dataclasses.replace(c, weight=c.weight.contiguous(memory_format=_CL))

    blocks = tuple(BlockPlan(conv(b.expand), conv(b.dw), b.se, conv(b.project), b.residual) for b in plan.blocks)
    return dataclasses.replace(plan, stem=conv(plan.stem), blocks=blocks, final=conv(plan.final), mix=conv(plan.mix))


def build_inplace_member(supernet: SuperNet, arch: Arch, bn_stats: Mapping[str, Tensor] | None = None, *,
                         channels_last: bool = True, warmup: int = 6) -> Member:
    """A member that runs on the super-network's functional path: its plan (sliced, kernel-transformed,
    BN-folded tensors) is computed once here, so switching to it is `SuperNet.use_plan`, a pointer swap."""
    t0 = time.perf_counter()
    with torch.no_grad():
        plan = supernet.plan(arch, bn_stats, fold_bn=True)
    if channels_last:
        plan = _plan_channels_last(plan)
    extract_ms = (time.perf_counter() - t0) * 1e3
    module = partial(run_plan, plan)
    _warm(module, _example(arch, supernet.space.in_channels, channels_last), warmup)
    return Member(arch, bn_stats, module, "inplace", channels_last, supernet.space.in_channels, plan=plan,
                  extract_ms=extract_ms, build_ms=(time.perf_counter() - t0) * 1e3)


# ----------------------------------------------------------------------------------------------------
# The dynamic network
# ----------------------------------------------------------------------------------------------------
class DynamicNetwork:
    """The super-network plus K resident, warm members; one of them is active.

    `switch(i)` / `switch(arch)` is a pointer swap (sub-microsecond); `predict(x)` runs the member that
    was active when it started. The super-network is kept (and put in eval mode) so more members can be
    added with `add` and so in-place members share its tensors."""

    def __init__(self, supernet: SuperNet, archs: Sequence[Arch], bn_stats: Sequence[Mapping[str, Tensor] | None] | None = None,
                 *, mode: str = "resident", backend: str = "auto", channels_last: bool = True, warmup: int = 6,
                 progress: Callable[[int, Member], None] | None = None):
        if mode not in MODES:
            raise UserError(f"mode '{mode}': expected one of {', '.join(MODES)}")
        archs = list(archs)
        if not archs:
            raise UserError("DynamicNetwork: no member architectures were given")
        if bn_stats is not None and len(bn_stats) != len(archs):
            raise UserError(f"bn_stats: expected one entry per member ({len(archs)}), got {len(bn_stats)}")
        self.supernet = supernet.eval()
        self.space = supernet.space
        self.mode, self.backend, self.channels_last, self.warmup = mode, backend, channels_last, warmup
        self.members: tuple[Member, ...] = ()
        self._index: dict[Arch, int] = {}
        for i, arch in enumerate(archs):
            member = self.add(arch, None if bn_stats is None else bn_stats[i])
            if progress is not None:
                progress(i, member)
        self._active: Member = self.members[0]
        self._warm_switches()

    @classmethod
    def calibrated(cls, supernet: SuperNet, archs: Sequence[Arch], batches: Sequence[Tensor], **kwargs) -> "DynamicNetwork":
        """Calibrate each member's BN statistics on `batches`, then build the network."""
        return cls(supernet, archs, bn_stats=calibrate_members(supernet, archs, batches), **kwargs)

    # --- members ----------------------------------------------------------------------------------
    def add(self, arch: Arch, bn_stats: Mapping[str, Tensor] | None = None) -> Member:
        """Prepare one more resident member (validates `arch`); returns it. Switching is unaffected."""
        self.space.validate(arch)
        key = self.space.canonical(arch)
        if key in self._index:
            raise UserError(f"member {arch.short()} is already resident (index {self._index[key]})")
        if self.mode == "inplace":
            member = build_inplace_member(self.supernet, arch, bn_stats, channels_last=self.channels_last,
                                          warmup=self.warmup)
        else:
            member = build_member(self.supernet, arch, bn_stats, backend=self.backend,
                                  channels_last=self.channels_last, warmup=self.warmup)
        self._index[key] = self._index[arch] = len(self.members)  # exact and canonical form
        self.members = self.members + (member,)  # a new tuple: concurrent readers see old or new, whole
        return member

    def __len__(self) -> int:
        return len(self.members)

    def index(self, arch: Arch) -> int:
        """Position of the resident member with this architecture."""
        i = self._index.get(arch)  # the usual case: the very arch the member was built from (~1 us)
        if i is not None:
            return i
        try:
            return self._index[self.space.canonical(arch)]
        except KeyError:
            raise UserError(f"member {arch.short()} is not resident (resident: {len(self.members)})") from None

    @property
    def active(self) -> Member:
        return self._active

    @property
    def active_index(self) -> int:
        return self._index[self._active.arch]

    # --- switching --------------------------------------------------------------------------------
    def switch(self, which: int | Arch | Member) -> Member:
        """Make another resident member active: a reference swap, no tensor work."""
        if type(which) is int:
            member = self.members[which]
        elif isinstance(which, Member):
            member = which
        else:
            member = self.members[self.index(which)]
        self._active = member
        if member.plan is not None:
            self.supernet.use_plan(member.plan)
        return member

    def _warm_switches(self) -> None:
        """Run every member once more after the others, so lazily-built per-shape state in the allocator
        and the graph executor exists for every member before the first real switch."""
        with torch.inference_mode():
            for _ in range(2):
                for m in self.members:
                    m.module(_example(m.arch, m.in_channels, m.channels_last))

    # --- inference --------------------------------------------------------------------------------
    def predict(self, x: Tensor) -> Tensor:
        """Logits of the active member for image batch `x` (N, C, H, W), resized to its resolution."""
        return self._active(x)

    def predict_with_member(self, x: Tensor) -> tuple[Member, Tensor]:
        """Like `predict`, also returning the member that produced the logits (for latency attribution
        when another thread switches concurrently)."""
        member = self._active
        return member, member(x)
