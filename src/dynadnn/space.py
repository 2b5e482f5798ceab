"""Search spaces and architectures.

A `SearchSpace` is data (a JSON preset): stage widths, strides, activations, SE flags and the elastic
choices. An `Arch` is one sub-network of a space: per-block kernel size and expand ratio, per-stage depth
and the input resolution. Everything above this module (super-network, predictors, search, runtime)
speaks in these two nouns.

OFA's own dict form (`{"ks": [...20], "e": [...20], "d": [...5], "r": [224]}`) silently accepts values
outside the space (e=2, short lists); `SearchSpace.validate` refuses them and names the field.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import ArchError, UserError
from .fileio import parse_json, read_json_object
from .validate import count, number
from .validate import field as json_field

ACTIVATIONS = ("relu", "h_swish")


@dataclass(frozen=True)
class Arch:
    """One sub-network. `ks` and `e` have one entry per block slot of the super-network (stages x max
    depth), as in OFA; entries of blocks beyond a stage's depth are carried but do not affect the network."""

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int

    def __post_init__(self) -> None:
        for name in ("ks", "e", "d"):
            value = getattr(self, name)
            if isinstance(value, np.ndarray) and value.ndim == 1:  # e.g. a search's genome
                value = value.tolist()
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                               for v in value):
                raise ArchError(f"arch field '{name}': expected a list of integers, got {value!r}")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)):
            raise ArchError(f"arch field 'r': expected an integer resolution, got {self.r!r}")
        object.__setattr__(self, "r", int(self.r))

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": self.r}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Arch":
        """Accepts our form and OFA's (`"r": [224]` or `"image_size": 224`)."""
        if not isinstance(data, Mapping):
            raise ArchError(f"arch: expected a JSON object with ks, e, d, r, got {type(data).__name__}")
        missing = [k for k in ("ks", "e", "d") if k not in data]
        if missing:
            raise ArchError(f"arch: missing field(s) {', '.join(missing)} (expected ks, e, d and r)")
        r = data.get("r", data.get("image_size"))
        if r is None:
            raise ArchError("arch: missing field 'r' (or OFA's 'image_size')")
        if isinstance(r, (list, tuple)):
            if len(r) != 1:
                raise ArchError(f"arch field 'r': expected one resolution, got {r!r}")
            r = r[0]
        return cls(ks=data["ks"], e=data["e"], d=data["d"], r=r)

    def to_ofa(self) -> dict[str, Any]:
        """OFA's dict form, as its demos and Dynamic-OFA's level files store it."""
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": [self.r]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        return cls.from_dict(parse_json(text, "arch", ArchError))

    def short(self) -> str:
        """A compact human-readable name, e.g. `d2343-r224-k355..-e346..`."""
        return f"d{''.join(map(str, self.d))}-r{self.r}-k{''.join(map(str, self.ks))}-e{''.join(map(str, self.e))}"


@dataclass(frozen=True)
class StageSpec:
    width: int
    stride: int
    act: str
    se: bool


# ----------------------------------------------------------------------------------------------------
# The layers of a space at one resolution: the one walk from a preset to its layers. The super-network
# builds its modules from it, the latency table its layers and keys, the FLOPs model its counts and
# profiling its per-layer modules.
# ----------------------------------------------------------------------------------------------------
def out_size(f: int, stride: int) -> int:
    """OFA's output feature size: `int((f - 1) / stride + 1)` (same-padding convolution)."""
    return int((f - 1) / stride + 1)


def middle_width(cin: int, expand: float, divisor: int = 8) -> int:
    """An inverted-residual block's middle (expanded) width, as OFA rounds it."""
    return make_divisible(round(cin * expand), divisor)


def se_width(mid: int, divisor: int = 8) -> int:
    """The squeeze-and-excite hidden width for a middle width, as OFA rounds it."""
    return make_divisible(mid // 4, divisor)


@dataclass(frozen=True)
class ConvShape:
    """A fixed convolution: the first conv (3x3), the final expand and the feature mix (1x1)."""

    fin: int  # input feature size
    cin: int
    cout: int
    kernel: int
    stride: int
    act: str
    bn: bool  # followed by batch norm (so biased once BN is folded)

    @property
    def fout(self) -> int:
        return out_size(self.fin, self.stride)


@dataclass(frozen=True)
class BlockShape:
    """One inverted-residual block of the super-network as every member sees it at one resolution. `index`
    is its position among the super-network's blocks (0: the fixed first block; elastic slot b is index
    b + 1), `stage` is -1 for the first block. The first block does not expand (`e_choices` (1,)): its middle
    width is its input width. Blocks after the first of a stage see the stage's output size whatever the
    depth, so `fin` holds for every member."""

    index: int
    stage: int
    fin: int
    cin: int
    cout: int
    stride: int
    act: str
    se: bool
    ks_choices: tuple[int, ...]
    e_choices: tuple[int, ...]
    divisor: int = 8

    @property
    def fout(self) -> int:
        return out_size(self.fin, self.stride)

    @property
    def expands(self) -> bool:
        return max(self.e_choices) != 1

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout

    def mid(self, e: float) -> int:
        """Middle width at expand ratio `e`."""
        return middle_width(self.cin, e, self.divisor) if self.expands else self.cin

    @property
    def max_mid(self) -> int:
        return self.mid(max(self.e_choices))

    def se_width(self, mid: int) -> int:
        return se_width(mid, self.divisor)


@dataclass(frozen=True)
class Layout:
    """Every layer any member of a space runs at input resolution `r`, in order: the first conv, the fixed
    first block then every elastic block slot (stages x max depth), the final expand, global pooling, the
    feature mix and the classifier (`feature_mix` -> `n_classes`)."""

    r: int
    stem: ConvShape
    blocks: tuple[BlockShape, ...]
    final: ConvShape
    mix: ConvShape
    n_classes: int

    @property
    def slots(self) -> tuple[BlockShape, ...]:
        """The elastic blocks, by slot (what `Arch.ks` / `Arch.e` index)."""
        return self.blocks[1:]


@dataclass(frozen=True)
class SearchSpace:
    """A preset: the fixed skeleton of an elastic MobileNetV3 plus its elastic choices."""

    name: str
    in_channels: int
    n_classes: int
    first_conv: StageSpec  # se unused
    first_block: StageSpec
    stages: tuple[StageSpec, ...]
    final_expand: int
    feature_mix: int
    ks_choices: tuple[int, ...]
    e_choices: tuple[int, ...]
    d_choices: tuple[int, ...]
    resolutions: tuple[int, ...]
    r_encoding: dict | None = None
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    dropout: float = 0.1
    description: str = ""
    divisor: int = field(default=8)

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "preset") -> "SearchSpace":
        """A space from its JSON description (a preset file, or the `space` an artifact embeds), every field
        checked for type, range and finiteness; a bad one raises a `UserError` naming `source` and the field.
        Bounds (`LIMITS`, `MAX_PARAMS`) are far above OFA's: past them a file is corrupt, not a plan."""
        if not isinstance(data, Mapping):
            raise UserError(f"{source}: expected a JSON object describing a search space, got {_kind(data)}")
        get = _SpaceFields(data, source)
        stages = json_field(data, "stages", list, source)
        if not 1 <= len(stages) <= LIMITS["stages"][1]:
            raise UserError(f"{source}: field 'stages': expected 1..{LIMITS['stages'][1]} stages, got {len(stages)}")
        name = json_field(data, "name", str, source)
        if not name:
            raise UserError(f"{source}: field 'name': expected a non-empty string")
        space = cls(
            name=name, in_channels=get.integer("in_channels"), n_classes=get.integer("n_classes"),
            first_conv=get.stage(data.get("first_conv"), "first_conv"),
            first_block=get.stage(data.get("first_block"), "first_block"),
            stages=tuple(get.stage(s, f"stages[{i}]") for i, s in enumerate(stages)),
            final_expand=get.integer("final_expand", "width"), feature_mix=get.integer("feature_mix", "width"),
            ks_choices=get.choices("ks_choices", "kernel"), e_choices=get.choices("e_choices", "expand"),
            d_choices=get.choices("d_choices", "depth"), resolutions=get.choices("resolutions", "resolution"),
            r_encoding=get.r_encoding(),
            bn_momentum=get.real("bn_momentum", 0.1, low=0.0, high=1.0),
            bn_eps=get.real("bn_eps", 1e-5, low=0.0, high=1.0, low_open=True),
            dropout=get.real("dropout", 0.1, low=0.0, high=1.0, high_open=True),
            description=json_field(data, "description", str, source, required=False) or "",
        )
        if any(k % 2 == 0 for k in space.ks_choices):
            raise UserError(f"{source}: field 'ks_choices' must hold odd kernel sizes, got {list(space.ks_choices)}")
        params = space.max_params()
        if params > MAX_PARAMS:
            raise UserError(f"{source}: its largest network would have {params:.3g} parameters (at most "
                            f"{MAX_PARAMS:.0e}); check the widths, expand ratios and depths")
        return space

    def max_params(self) -> int:
        """Weights of the super-network (its largest member plus the classifier), from the shapes alone."""
        lay = self.layout(self.resolutions[0])
        total = lay.stem.cin * lay.stem.cout * 9 + lay.final.cin * lay.final.cout + lay.mix.cin * lay.mix.cout
        total += lay.mix.cout * lay.n_classes
        for b in lay.blocks:
            mid, k = b.max_mid, max(b.ks_choices)
            se = 2 * mid * b.se_width(mid) if b.se else 0
            total += (b.cin * mid if b.expands else 0) + mid * k * k + mid * b.cout + se
        return total

    def to_dict(self) -> dict[str, Any]:
        def st(s: StageSpec) -> dict[str, Any]:
            return {"width": s.width, "stride": s.stride, "act": s.act, "se": s.se}

        out = {
            "name": self.name, "description": self.description, "in_channels": self.in_channels,
            "n_classes": self.n_classes, "first_conv": st(self.first_conv), "first_block": st(self.first_block),
            "stages": [st(s) for s in self.stages], "final_expand": self.final_expand,
            "feature_mix": self.feature_mix, "ks_choices": list(self.ks_choices),
            "e_choices": list(self.e_choices), "d_choices": list(self.d_choices),
            "resolutions": list(self.resolutions), "bn_momentum": self.bn_momentum,
            "bn_eps": self.bn_eps, "dropout": self.dropout,
        }
        if self.r_encoding:
            out["r_encoding"] = dict(self.r_encoding)
        return out

    # --- shape facts ----------------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return len(self.stages)

    @property
    def max_depth(self) -> int:
        return max(self.d_choices)

    @property
    def n_blocks(self) -> int:
        """Elastic block slots (OFA: 20), excluding the fixed first block."""
        return self.n_stages * self.max_depth

    def stage_of(self, block: int) -> int:
        return block // self.max_depth

    def active_blocks(self, arch: Arch) -> list[int]:
        """Indices (0-based among elastic slots) of the blocks an architecture runs."""
        return [s * self.max_depth + i for s, d in enumerate(arch.d) for i in range(d)]

    def middle_width(self, in_width: int, expand: float) -> int:
        return middle_width(in_width, expand, self.divisor)

    def se_width(self, mid: int) -> int:
        return se_width(mid, self.divisor)

    def layout(self, r: int) -> Layout:
        """The layers of every member at input resolution `r` (see `Layout`). Channels, kernels and strides do
        not depend on `r`: the super-network is built from any resolution's layout."""
        fc, fb = self.first_conv, self.first_block
        stem = ConvShape(r, self.in_channels, fc.width, 3, fc.stride, fc.act, True)
        blocks = [BlockShape(0, -1, stem.fout, fc.width, fb.width, fb.stride, fb.act, fb.se, (3,), (1,), self.divisor)]
        for s, st in enumerate(self.stages):
            for i in range(self.max_depth):
                prev = blocks[-1]
                blocks.append(BlockShape(len(blocks), s, prev.fout, prev.cout, st.width, st.stride if i == 0 else 1,
                                         st.act, st.se, self.ks_choices, self.e_choices, self.divisor))
        last = blocks[-1]
        final = ConvShape(last.fout, last.cout, self.final_expand, 1, 1, "h_swish", True)
        mix = ConvShape(1, self.final_expand, self.feature_mix, 1, 1, "h_swish", False)
        return Layout(r, stem, tuple(blocks), final, mix, self.n_classes)

    # --- validation -----------------------------------------------------------------------------
    def validate(self, arch: Arch) -> Arch:
        """Return `arch` if it belongs to this space; raise `ArchError` naming the field otherwise."""
        for name, n, allowed in (("ks", self.n_blocks, self.ks_choices), ("e", self.n_blocks, self.e_choices),
                                 ("d", self.n_stages, self.d_choices)):
            values = getattr(arch, name)
            if len(values) != n:
                raise ArchError(f"arch field '{name}': expected {n} values for preset '{self.name}', got {len(values)}")
            for i, v in enumerate(values):
                if v not in allowed:
                    raise ArchError(f"arch field '{name}[{i}]' is {v}; preset '{self.name}' allows {list(allowed)}")
        if arch.r not in self.resolutions:
            raise ArchError(f"arch field 'r' is {arch.r}; preset '{self.name}' allows {self.describe_resolutions()}")
        return arch

    def describe_resolutions(self) -> str:
        """`[20, 24, 28, 32]`, or `128..224 in steps of 4` for a long evenly spaced list."""
        res = self.resolutions
        steps = {b - a for a, b in zip(res, res[1:])}
        if len(res) <= 8:
            return str(list(res))
        if len(steps) == 1:
            return f"{res[0]}..{res[-1]} in steps of {steps.pop()}"
        return f"one of {list(res)}"

    def canonical(self, arch: Arch) -> Arch:
        """The same network with inactive block slots set to the smallest choice, so equal networks compare
        equal (searches de-duplicate on this)."""
        active = set(self.active_blocks(arch))
        ks = tuple(k if i in active else self.ks_choices[0] for i, k in enumerate(arch.ks))
        e = tuple(x if i in active else self.e_choices[0] for i, x in enumerate(arch.e))
        return Arch(ks, e, arch.d, arch.r)

    # --- sampling -------------------------------------------------------------------------------
    def max_arch(self, r: int | None = None) -> Arch:
        return Arch((max(self.ks_choices),) * self.n_blocks, (max(self.e_choices),) * self.n_blocks,
                    (max(self.d_choices),) * self.n_stages, r or max(self.resolutions))

    def min_arch(self, r: int | None = None) -> Arch:
        return Arch((min(self.ks_choices),) * self.n_blocks, (min(self.e_choices),) * self.n_blocks,
                    (min(self.d_choices),) * self.n_stages, r or min(self.resolutions))

    def sample(self, rng: random.Random, r: int | None = None) -> Arch:
        """Uniform per choice, as OFA samples (not uniform over networks)."""
        return Arch(tuple(rng.choice(self.ks_choices) for _ in range(self.n_blocks)),
                    tuple(rng.choice(self.e_choices) for _ in range(self.n_blocks)),
                    tuple(rng.choice(self.d_choices) for _ in range(self.n_stages)),
                    r if r is not None else rng.choice(self.resolutions))

    def sample_sized(self, rng: random.Random, level: float | None = None) -> Arch:
        """A member of a random size: draw a level u in [0, 1] (uniform unless given), then each choice
        independently with P(j-th smallest of n) proportional to u**j * (1-u)**(n-1-j), so u = 0.5 is
        uniform per choice and u near 0 or 1 gives members near the smallest or largest.

        Why: uniform per-choice sampling piles members up in the middle of the space (each is the sum of
        20-odd independent choices), while the search has to rank members from the smallest to the
        largest. Measured on the shipped animals model: top-1 std 0.75 points over sized members against
        0.54 over uniform ones, so an accuracy predictor trained on them sees the range it is used on."""
        u = rng.random() if level is None else float(level)

        def pick(choices: Sequence) -> Any:
            ordered = sorted(choices)
            n = len(ordered)
            weights = [u ** j * (1 - u) ** (n - 1 - j) for j in range(n)]
            return ordered[rng.choices(range(n), weights=weights)[0]]  # 0 ** 0 == 1: u = 0 or 1 is well defined

        return Arch(tuple(pick(self.ks_choices) for _ in range(self.n_blocks)),
                    tuple(pick(self.e_choices) for _ in range(self.n_blocks)),
                    tuple(pick(self.d_choices) for _ in range(self.n_stages)), pick(self.resolutions))

    def mutate(self, arch: Arch, rng: random.Random, prob: float = 0.1) -> Arch:
        """Re-draw each gene with probability `prob` (OFA's evolution mutates this way)."""
        pick = lambda v, choices: rng.choice(choices) if rng.random() < prob else v  # noqa: E731
        return Arch(tuple(pick(k, self.ks_choices) for k in arch.ks), tuple(pick(e, self.e_choices) for e in arch.e),
                    tuple(pick(d, self.d_choices) for d in arch.d), pick(arch.r, self.resolutions))

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Uniform crossover, gene by gene."""
        mix = lambda x, y: tuple(rng.choice((u, v)) for u, v in zip(x, y))  # noqa: E731
        return Arch(mix(a.ks, b.ks), mix(a.e, b.e), mix(a.d, b.d), rng.choice((a.r, b.r)))

    def size(self) -> int:
        """Number of distinct networks (inactive slots do not count)."""
        per_block = len(self.ks_choices) * len(self.e_choices)
        per_stage = sum(per_block ** d for d in self.d_choices)
        return per_stage ** self.n_stages * len(self.resolutions)

    # --- encoding -------------------------------------------------------------------------------
    @property
    def encoding_size(self) -> int:
        return self.n_blocks * (len(self.ks_choices) + len(self.e_choices)) + self._r_slots()

    def _r_slots(self) -> int:
        return int(self.r_encoding["slots"]) if self.r_encoding else len(self.resolutions)

    def _r_index(self, r: int) -> int:
        if self.r_encoding:
            idx = (r - int(self.r_encoding["start"])) // int(self.r_encoding["step"])
            return min(max(idx, 0), self._r_slots() - 1)
        return self.resolutions.index(r)

    def encode(self, arch: Arch) -> np.ndarray:
        """OFA's one-hot encoding, generalised: [kernel one-hot per block | expand one-hot per block |
        resolution one-hot]; blocks beyond a stage's depth are all zeros."""
        return self.encode_many([arch])[0]

    def encode_many(self, archs: Sequence[Arch]) -> np.ndarray:
        nk, ne = len(self.ks_choices), len(self.e_choices)
        out = np.zeros((len(archs), self.encoding_size), dtype=np.float32)
        kidx = {k: i for i, k in enumerate(self.ks_choices)}
        eidx = {e: i for i, e in enumerate(self.e_choices)}
        e_off = self.n_blocks * nk
        r_off = e_off + self.n_blocks * ne
        for row, arch in enumerate(archs):
            for b in self.active_blocks(arch):
                out[row, b * nk + kidx[arch.ks[b]]] = 1.0
                out[row, e_off + b * ne + eidx[arch.e[b]]] = 1.0
            out[row, r_off + self._r_index(arch.r)] = 1.0
        return out


# Bounds of what a search-space file may describe (inclusive), far beyond OFA's: past them it is a typo or
# a corrupt file. `MAX_PARAMS` bounds the super-network the description would build (OFA w1.2: 1.1e7).
LIMITS: dict[str, tuple[int, int]] = {
    "in_channels": (1, 64), "n_classes": (1, 100_000), "width": (1, 8192), "stride": (1, 4), "stages": (1, 32),
    "kernel": (1, 15), "expand": (1, 16), "depth": (1, 32), "resolution": (1, 4096), "choices": (1, 64),
    "r_start": (0, 4096), "r_step": (1, 4096), "r_slots": (1, 1024),
}
MAX_PARAMS = 100_000_000


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false",
            type(None): "null"}.get(type(value), "a number")


class _SpaceFields:
    """Checked reads of one search-space description's fields (see `SearchSpace.from_dict`)."""

    def __init__(self, data: Mapping[str, Any], source: str):
        self.data, self.source = data, source

    def integer(self, key: str, limit: str | None = None, doc: Mapping[str, Any] | None = None,
                where: str = "") -> int:
        doc = self.data if doc is None else doc
        name = f"{self.source}: field '{where + '.' if where else ''}{key}'"
        if key not in doc:
            raise UserError(f"{name} is missing")
        low, high = LIMITS[limit or key]
        return count(doc[key], name, low=low, high=high)

    def real(self, key: str, default: float, **bounds: Any) -> float:
        value = self.data.get(key, default)
        return number(value, f"{self.source}: field '{key}'", **bounds)

    def stage(self, obj: Any, where: str) -> StageSpec:
        if not isinstance(obj, Mapping):
            raise UserError(f"{self.source}: field '{where}' must be an object with width, stride, act[, se], "
                            f"got {_kind(obj)}")
        act = obj.get("act", "relu")
        if not isinstance(act, str) or act not in ACTIVATIONS:
            raise UserError(f"{self.source}: field '{where}.act' is {_short(act)}; expected one of {ACTIVATIONS}")
        se = obj.get("se", False)
        if not isinstance(se, bool):
            raise UserError(f"{self.source}: field '{where}.se': expected true or false, got {_short(se)}")
        return StageSpec(self.integer("width", doc=obj, where=where), self.integer("stride", doc=obj, where=where),
                         act, se)

    def choices(self, key: str, limit: str) -> tuple[int, ...]:
        values = json_field(self.data, key, list, self.source)
        low, high = LIMITS["choices"]
        if not low <= len(values) <= high:
            raise UserError(f"{self.source}: field '{key}': expected {low}..{high} choices, got {len(values)}")
        lo, hi = LIMITS[limit]
        out = [count(v, f"{self.source}: field '{key}[{i}]'", low=lo, high=hi) for i, v in enumerate(values)]
        if len(set(out)) != len(out):
            raise UserError(f"{self.source}: field '{key}' lists a choice twice: {out}")
        return tuple(sorted(out))

    def r_encoding(self) -> dict | None:
        raw = self.data.get("r_encoding")
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise UserError(f"{self.source}: field 'r_encoding': expected an object with start, step and slots "
                            f"(or null), got {_kind(raw)}")
        return {key: self.integer(key, f"r_{key}", doc=raw, where="r_encoding") for key in ("start", "step", "slots")}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def make_divisible(v: float, divisor: int = 8, min_val: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor` without dropping more than 10 % (as OFA/TF do)."""
    min_val = min_val or divisor
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def list_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("dynadnn.presets").iterdir() if p.name.endswith(".json"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A preset by name (`tiny`, `ofa_mbv3_w1.0`, `ofa_mbv3_w1.2`) or a JSON file path."""
    if isinstance(name_or_path, str) and name_or_path in list_presets():
        text = resources.files("dynadnn.presets").joinpath(f"{name_or_path}.json").read_text()
        source = f"preset '{name_or_path}'"
        return SearchSpace.from_dict(parse_json(text, source), source)
    path = Path(name_or_path)
    try:
        found = path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        found = False
    if not found:
        raise UserError(f"unknown preset {_short(str(name_or_path))}: expected one of {', '.join(list_presets())} "
                        "or a JSON file")
    source = str(path) if len(str(path)) <= 120 else f"{str(path)[:60]}...{str(path)[-40:]}"
    return SearchSpace.from_dict(read_json_object(path), source)
