"""Latency look-up tables: a member's latency as the sum of its layers' measured latencies.

Layers are keyed exactly as Once-for-All and Dynamic-OFA key them, so their published tables load
unchanged and ours can be read by their code:

    Conv-input:224x224x3-output:112x112x24
    expanded_conv-input:112x112x24-output:56x56x32-expand:144-kernel:3-stride:2-idskip:0-se:0-hs:0
    Conv_1-input:7x7x192-output:7x7x1152      AvgPool2D-input:7x7x1152-output:1x1x1152
    Conv_2-input:1x1x1152-output:1x1x1536     Logits-input:1x1x1536-output:1000

with feature sizes `int((f - 1) / stride + 1)`. A table holds one `{key: {"count", "mean", "std"}}` dict per
input resolution (mean in milliseconds). On load every key the space needs is looked up once and laid out
as a cost array `[resolution, block slot, kernel, expand]`; predicting any number of architectures is then
one gather and one masked sum in numpy (10^4 architectures in about a millisecond).

A LUT sum misses what happens between layers (framework dispatch, memory traffic between ops), which
dominates small networks on a CPU; a per-context `Correction` (linear in the LUT sum and the number of
blocks, with an offset per resolution where cross-validation wants one, fitted on whole members measured on
the device) absorbs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..fileio import read_json_object
from ..provenance import check_checkpoint, check_space, resolve_space
from ..space import Arch, BlockShape, ConvShape, SearchSpace
from .genes import GeneCoding

TABLE_FORMAT = "dynadnn.latency_table/1"
TABLE_META = "table.json"
FIXED_KINDS = ("Conv", "Conv_1", "AvgPool2D", "Conv_2", "Logits")

# Reference tables shipped with Dynamic-OFA, by the context names used throughout dynadnn.
REFERENCE_CONTEXTS = {"jetson_cpu": "jetson_xavier_nx_cpu", "jetson_gpu": "jetson_xavier_nx_gpu"}


@dataclass(frozen=True)
class Layer:
    """One distinct layer of a search space at one resolution: everything its latency depends on. `shape` is
    the layer of the space's `Layout` it stands for (not part of the key: equal keys are equal layers)."""

    kind: str
    fin: int
    cin: int
    fout: int
    cout: int
    mid: int = 0
    kernel: int = 0
    stride: int = 1
    idskip: int = 0
    se: int = 0
    hs: int = 0
    shape: ConvShape | BlockShape | None = field(default=None, compare=False, repr=False)

    @classmethod
    def conv(cls, kind: str, c: ConvShape) -> "Layer":
        return cls(kind, c.fin, c.cin, c.fout, c.cout, shape=c)

    @classmethod
    def block(cls, b: BlockShape, k: int, e: int) -> "Layer":
        """An `expanded_conv` layer: block `b` at kernel `k` and expand ratio `e`."""
        return cls("expanded_conv", b.fin, b.cin, b.fout, b.cout, mid=b.mid(e), kernel=k, stride=b.stride,
                   idskip=int(b.residual), se=int(b.se), hs=int(b.act == "h_swish"), shape=b)

    @property
    def key(self) -> str:
        if self.kind == "Logits":
            return f"Logits-input:1x1x{self.cin}-output:{self.cout}"
        base = f"{self.kind}-input:{self.fin}x{self.fin}x{self.cin}-output:{self.fout}x{self.fout}x{self.cout}"
        if self.kind != "expanded_conv":
            return base
        return (f"{base}-expand:{self.mid}-kernel:{self.kernel}-stride:{self.stride}-idskip:{self.idskip}"
                f"-se:{self.se}-hs:{self.hs}")


@dataclass(frozen=True)
class SpaceLayers:
    """The layers of every member of a space at one resolution: fixed ones plus, per block slot, one layer
    per (kernel, expand) choice."""

    r: int
    fixed: tuple[Layer, ...]  # Conv, first block, Conv_1, AvgPool2D, Conv_2, Logits
    blocks: tuple[tuple[tuple[Layer, ...], ...], ...]  # [slot][kernel idx][expand idx]


def space_layers(space: SearchSpace, r: int) -> SpaceLayers:
    """OFA's layers of `space.layout(r)`."""
    lay = space.layout(r)
    first, final, mix = lay.blocks[0], lay.final, lay.mix
    fixed = (Layer.conv("Conv", lay.stem), Layer.block(first, first.ks_choices[0], first.e_choices[0]),
             Layer.conv("Conv_1", final), Layer("AvgPool2D", final.fout, final.cout, 1, final.cout),
             Layer.conv("Conv_2", mix), Layer("Logits", 1, mix.cout, 1, lay.n_classes))
    blocks = tuple(tuple(tuple(Layer.block(b, k, e) for e in b.e_choices) for k in b.ks_choices) for b in lay.slots)
    return SpaceLayers(r, fixed, blocks)


def arch_layers(space: SearchSpace, arch: Arch) -> list[Layer]:
    """The layers one architecture runs, in order (what OFA's `predict_network_latency_given_spec` walks)."""
    space.validate(arch)
    sl = space_layers(space, arch.r)
    ki = {k: i for i, k in enumerate(space.ks_choices)}
    ei = {e: i for i, e in enumerate(space.e_choices)}
    blocks = [sl.blocks[b][ki[arch.ks[b]]][ei[arch.e[b]]] for b in space.active_blocks(arch)]
    return list(sl.fixed[:2]) + blocks + list(sl.fixed[2:])


# ------------------------------------------------------------------------------------------------------
# Correction for what a LUT sum misses
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Correction:
    """measured ~= a * lut_sum + b * n_blocks + c (+ offsets[r], one per resolution, when fitted with them),
    by least squares on measured whole members.

    Why per-resolution offsets: on 2 threads, ONNX Runtime's members at 28-32 px ran ~0.07 ms faster than
    their layers' sum predicts, relative to 20-24 px (BENCHMARKS.md, session 5), which a single intercept cannot
    follow (held-out tau 0.85 -> 0.91 with offsets). `MemberCheck.fit` adds them only where cross-validation
    says they help."""

    a: float = 1.0
    b: float = 0.0
    c: float = 0.0
    offsets: Mapping[int, float] = field(default_factory=dict)

    def apply(self, lut_sum: np.ndarray, n_blocks: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
        out = self.a * np.asarray(lut_sum, float) + self.b * np.asarray(n_blocks, float) + self.c
        if self.offsets and r is not None:  # vectorised: the search applies this to 10^4 rows at a time
            keys = np.array(sorted(self.offsets))
            vals = np.array([self.offsets[k] for k in keys])
            r = np.atleast_1d(np.asarray(r))
            pos = np.minimum(np.searchsorted(keys, r), len(keys) - 1)
            out = out + np.where(keys[pos] == r, vals[pos], 0.0)
        return out

    @classmethod
    def fit(cls, lut_sum: Sequence[float], n_blocks: Sequence[float], measured: Sequence[float],
            r: Sequence[int] | None = None) -> "Correction":
        """The global fit, or with `r` (each member's resolution) one offset per resolution (the first
        resolution's offset is 0: it is the intercept)."""
        cols = [np.asarray(lut_sum, float), np.asarray(n_blocks, float), np.ones(len(lut_sum))]
        levels: list[int] = []
        if r is not None:
            rr = np.asarray(r, int)
            levels = sorted(set(rr.tolist()))[1:]
            cols += [(rr == v).astype(float) for v in levels]
        coef, *_ = np.linalg.lstsq(np.column_stack(cols), np.asarray(measured, float), rcond=None)
        offsets = {v: float(w) for v, w in zip(levels, coef[3:])}
        return cls(float(coef[0]), float(coef[1]), float(coef[2]), offsets)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"a": self.a, "b": self.b, "c": self.c}
        if self.offsets:
            out["offsets"] = {str(k): v for k, v in sorted(self.offsets.items())}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "correction") -> "Correction":
        """Read `{"a", "b", "c"[, "offsets": {resolution: number}]}`: finite numbers, else a one-line error."""
        from ..validate import field as check_field, number

        if not isinstance(d, Mapping):
            raise UserError(f"{source}: expected an object with numbers a, b, c, got {d!r:.60}")
        a, b, c = (check_field(d, k, float, source) for k in ("a", "b", "c"))
        raw = check_field(d, "offsets", dict, source, required=False) or {}
        offsets = {}
        for k, v in raw.items():
            if not str(k).isdigit():
                raise UserError(f"{source}: field 'offsets': expected resolutions as keys, got {k!r:.60}")
            offsets[int(k)] = number(v, f"{source}: field 'offsets.{k}'")
        return cls(a, b, c, offsets)


# ------------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------------
Entries = Mapping[int, Mapping[str, Mapping[str, float]]]


@dataclass
class LatencyTable:
    """Per-layer latencies (ms) for one hardware context, laid out for vectorised prediction."""

    space: SearchSpace
    context: str
    entries: Entries
    source: str = "table"
    correction: Correction | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    checkpoint_sha256: str = ""  # the super-network profiled, when known (provenance: latency depends on shapes only)

    def __post_init__(self) -> None:
        self.resolutions: tuple[int, ...] = tuple(sorted(int(r) for r in self.entries if int(r) in self.space.resolutions))
        if not self.resolutions:
            have = sorted(int(r) for r in self.entries)
            raise UserError(f"{self.source}: latency table '{self.context}' has no resolution of preset "
                            f"'{self.space.name}' (table has {have or 'none'}, preset allows "
                            f"{self.space.resolutions[0]}..{self.space.resolutions[-1]})")
        s = self.space
        nr, nb, nk, ne = len(self.resolutions), s.n_blocks, len(s.ks_choices), len(s.e_choices)
        self.fixed_ms = np.zeros(nr)
        self.block_ms = np.zeros((nr, nb, nk, ne))
        for ri, r in enumerate(self.resolutions):
            table = self.entries[r]
            sl = space_layers(s, r)
            self.fixed_ms[ri] = sum(self._mean(table, layer, r) for layer in sl.fixed)
            for b, per_k in enumerate(sl.blocks):
                for ki, per_e in enumerate(per_k):
                    for ei, layer in enumerate(per_e):
                        self.block_ms[ri, b, ki, ei] = self._mean(table, layer, r)
        self._r_pos = {r: i for i, r in enumerate(self.resolutions)}
        self._r_maps: dict[tuple[int, ...], np.ndarray] = {}

    def _mean(self, table: Mapping[str, Mapping[str, float]], layer: Layer, r: int) -> float:
        entry = table.get(layer.key)
        if entry is None:
            raise UserError(f"{self.source}: latency table '{self.context}' at resolution {r} has no entry for "
                            f"layer '{layer.key}' (preset '{self.space.name}' needs it)")
        return entry_mean(entry, f"{self.source}: resolution {r}: entry '{layer.key}'")

    # --- prediction -----------------------------------------------------------------------------
    def coding(self) -> GeneCoding:
        """Gene coding over the resolutions this table covers (what a search over it should use)."""
        return GeneCoding(self.space, self.resolutions)

    def _r_map(self, coding: GeneCoding) -> np.ndarray:
        """Row of `block_ms` / `fixed_ms` for each of the coding's resolution indices."""
        cached = self._r_maps.get(coding.resolutions)
        if cached is not None:
            return cached
        missing = [r for r in coding.resolutions if r not in self._r_pos]
        if missing:
            raise UserError(f"{self.source}: latency table '{self.context}' has no entries for resolution "
                            f"{missing[0]} (file {missing[0]}_lookup_table.json); it covers "
                            f"{self.resolutions[0]}..{self.resolutions[-1]}")
        self._r_maps[coding.resolutions] = out = np.array([self._r_pos[r] for r in coding.resolutions])
        return out

    def lut_sum_genes(self, genes: np.ndarray, coding: GeneCoding | None = None) -> np.ndarray:
        """Raw sum of layer means (ms) for each gene row."""
        coding = coding or self.coding()
        return self._lut_sum(genes, coding, coding.block_mask(genes))

    def _lut_sum(self, genes: np.ndarray, coding: GeneCoding, mask: np.ndarray) -> np.ndarray:
        k, e, _, r = coding.split(genes)
        ri = self._r_map(coding)[r]
        nb, nk, ne = self.block_ms.shape[1:]
        per_block = self.block_ms.reshape(-1)[((ri[:, None] * nb + np.arange(nb)[None, :]) * nk + k) * ne + e]
        return self.fixed_ms[ri] + (per_block * mask).sum(1)

    def predict_genes(self, genes: np.ndarray, coding: GeneCoding | None = None, corrected: bool = True) -> np.ndarray:
        """Predicted latency (ms) per gene row; with the context's correction when it has one."""
        coding = coding or self.coding()
        mask = coding.block_mask(genes)  # once: the search calls this on 10^4 rows at a time
        raw = self._lut_sum(genes, coding, mask)
        if corrected and self.correction is not None:
            r = np.asarray(coding.resolutions)[coding.split(genes)[3]]
            return self.correction.apply(raw, mask.sum(1), r)
        return raw

    def slot_costs_genes(self, genes: np.ndarray, coding: GeneCoding | None = None) -> np.ndarray:
        """[n, block slots, kernels x expands] ms: what each slot would cost under each of its (kernel,
        expand) choices, at each row's resolution, scaled as the correction scales a LUT sum. Changing one
        active slot's choice moves the predicted latency by the difference of two entries (the correction's
        other terms depend on depth and resolution only), so a search can bring an over-budget candidate within
        budget without predicting it again after every change."""
        coding = coding or self.coding()
        ri = self._r_map(coding)[coding.split(genes)[3]]
        scale = self.correction.a if self.correction is not None else 1.0
        return self.block_ms[ri].reshape(len(ri), coding.nb, -1) * scale

    def predict(self, archs: Sequence[Arch] | Arch, corrected: bool = True) -> np.ndarray:
        archs = [archs] if isinstance(archs, Arch) else list(archs)
        coding = GeneCoding(self.space, tuple(sorted({a.r for a in archs})))
        return self.predict_genes(coding.encode(archs), coding, corrected)

    def layer_sum(self, arch: Arch) -> float:
        """Slow reference path: look every layer up by key and add (what OFA's estimator does)."""
        if arch.r not in self._r_pos:
            self._r_map(GeneCoding(self.space, (arch.r,)))
        return float(sum(self._mean(self.entries[arch.r], layer, arch.r) for layer in arch_layers(self.space, arch)))

    def fastest(self, coding: GeneCoding | None = None) -> tuple[Arch, float]:
        """The architecture with the lowest predicted latency: per resolution, the cheapest (kernel, expand) of
        every slot at the shallowest depth (exact while layer costs are non-negative), then the best resolution."""
        coding = coding or self.coding()
        s = self.space
        ri = self._r_map(coding)
        best = None
        for pos, r in enumerate(coding.resolutions):
            # Per slot the cheapest (kernel, expand); depth: the cheapest prefix length per stage.
            cost = self.block_ms[ri[pos]].reshape(coding.nb, -1)
            kmin = cost.argmin(1)
            g = np.zeros(coding.n_genes, dtype=np.int64)
            g[:coding.nb] = kmin // len(s.e_choices)
            g[coding.nb:2 * coding.nb] = kmin % len(s.e_choices)
            g[2 * coding.nb:2 * coding.nb + coding.ns] = 0  # d_choices sorted: index 0 is the shallowest
            g[-1] = pos
            lat = float(self.predict_genes(g[None], coding)[0])
            if best is None or lat < best[1]:
                best = (coding.decode(g[None])[0], lat)
        return best  # type: ignore[return-value]

    # --- files ----------------------------------------------------------------------------------
    @classmethod
    def from_dynamic_ofa(cls, directory: str | Path, space: SearchSpace | None = None,
                         context: str | None = None) -> "LatencyTable":
        """Dynamic-OFA's layout: one `{r}_lookup_table.json` per resolution (ours adds `table.json`, whose
        `space`, `context` and `correction` are used: `space`, when given, must be the space it describes;
        Dynamic-OFA's own directories, which have no `table.json`, need `space`)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise UserError(f"latency table directory '{directory}' does not exist")
        entries: dict[int, dict] = {}
        for path in sorted(directory.glob("*_lookup_table.json")):
            m = re.fullmatch(r"(\d+)_lookup_table\.json", path.name)
            if not m:
                continue
            entries[int(m.group(1))] = doc = read_json_object(path)
            for key, entry in doc.items():  # every entry, used by this space or not: the file is what is read
                entry_mean(entry, f"{path}: entry '{key}'")
        if not entries:
            raise UserError(f"{directory}: no '<resolution>_lookup_table.json' files (expected Dynamic-OFA's layout)")
        correction, meta, sha = None, {}, ""
        meta_path = directory / TABLE_META
        if meta_path.is_file():
            meta = _read_meta(meta_path)
            space = resolve_space(meta, str(meta_path), space, "latency table")
            if meta.get("correction") is not None:
                correction = Correction.from_dict(meta["correction"], f"{meta_path}: field 'correction'")
            context = _optional(meta, "context", str, meta_path) or context
            sha = _optional(meta, "checkpoint_sha256", str, meta_path) or ""
            meta.pop("checkpoint_sha256", None)
            meta.pop("space", None)
        elif space is None:
            raise UserError(f"{directory}: no {TABLE_META} describing the table's search space; pass the space it "
                            "was measured for")
        return cls(space, context or directory.name, entries, str(directory), correction, meta, sha)

    @classmethod
    def from_ofa_yaml(cls, paths: Mapping[int, str | Path] | str | Path, space: SearchSpace,
                      context: str) -> "LatencyTable":
        """OFA's layout: `{r}_lookup_table.yaml` per resolution (a directory, or {r: path})."""
        if not isinstance(paths, Mapping):
            directory = Path(paths)
            found = {int(m.group(1)): p for p in sorted(directory.glob("*_lookup_table.yaml"))
                     if (m := re.fullmatch(r"(\d+)_lookup_table\.yaml", p.name))}
            if not found:
                raise UserError(f"{directory}: no '<resolution>_lookup_table.yaml' files (expected OFA's layout)")
            paths = found
        entries = {int(r): read_yaml_table(Path(p)) for r, p in paths.items()}
        return cls(space, context, entries, str(next(iter(paths.values()))), None, {})

    def save(self, directory: str | Path, meta: Mapping[str, Any] | None = None, yaml_too: bool = False) -> Path:
        """Write Dynamic-OFA's layout (one JSON per resolution) plus `table.json` (context, preset and `space`,
        the search space's full description, `checkpoint_sha256`, correction, provenance from `self.meta`
        and `meta`); each file atomically."""
        from ..fileio import make_dir, write_json, write_text

        directory = make_dir(directory, "table directory")
        for r in self.resolutions:
            write_json(directory / f"{r}_lookup_table.json", self.entries[r], indent=1, sort_keys=True)
            if yaml_too:
                write_text(directory / f"{r}_lookup_table.yaml", yaml_table_text(self.entries[r]))
        extra = {**dict(self.meta), **dict(meta or {})}
        info = {**extra, "format": TABLE_FORMAT, "context": self.context, "preset": self.space.name,
                "space": self.space.to_dict(), "checkpoint_sha256": self.checkpoint_sha256 or extra.get("checkpoint_sha256"),
                "resolutions": list(self.resolutions), "unit": "ms",
                "correction": self.correction.to_dict() if self.correction else None}
        write_json(directory / TABLE_META, info, indent=1)
        return directory

    def check_checkpoint(self, checkpoint: str | Path) -> None:
        """Refuse a super-network checkpoint of another search space (naming the first differing field). Its
        sha256 is not compared: a layer's latency depends on its shapes, not its weights, so one profile
        serves every checkpoint of the space (e.g. after more training)."""
        check_checkpoint(self.space, self.checkpoint_sha256, checkpoint, f"{self.source}: latency table "
                         f"'{self.context}'", UserError, sha="ignore")


def _read_meta(path: Path) -> dict[str, Any]:
    meta = read_json_object(path, TABLE_FORMAT)
    for key, kind in (("context", str), ("checkpoint_sha256", str), ("correction", dict), ("report", dict),
                      ("backend", str), ("members", list), ("resolutions", list)):
        _optional(meta, key, kind, path)
    return meta


def _optional(doc: Mapping[str, Any], key: str, kind: type, source: Path) -> Any:
    """`doc[key]` of type `kind`, or None when missing or null."""
    from ..validate import field as check_field

    return None if doc.get(key) is None else check_field(doc, key, kind, str(source))


def entry_mean(entry: Any, source: str) -> float:
    """A layer's mean latency (ms) from its table entry `{"count", "mean", "std"}`: finite and >= 0."""
    from ..validate import number

    if not isinstance(entry, Mapping) or "mean" not in entry:
        raise UserError(f"{source}: expected an object with a numeric 'mean' (ms), got {entry!r:.60}")
    return number(entry["mean"], f"{source}: field 'mean'", low=0.0)


def yaml_table_text(entries: Mapping[str, Mapping[str, float]]) -> str:
    """OFA's YAML layout (`key:\\n  count: N\\n  mean: X\\n  std: Y`), written without a YAML library."""
    lines = []
    for key in sorted(entries):
        e = entries[key]
        lines.append(f"{key}:")
        for field_ in ("count", "mean", "std"):
            if field_ in e:
                lines.append(f"  {field_}: {e[field_]!r}")
    return "\n".join(lines) + "\n"


def read_yaml_table(path: Path) -> dict[str, dict[str, float]]:
    """Read OFA's YAML table with PyYAML's safe loader when installed, else a parser for that flat layout."""
    if not path.is_file():
        raise UserError(f"latency table '{path}' does not exist")
    text = path.read_text()
    try:
        import yaml  # type: ignore

        data = yaml.safe_load(text)
    except ImportError:
        data, current = {}, None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if not line.startswith(" "):
                current = line.rstrip().rstrip(":")
                data[current] = {}
            elif current is not None and ":" in line:
                name, value = line.strip().split(":", 1)
                data[current][name.strip()] = float(value)
            else:
                raise UserError(f"{path}: line {n}: expected 'key:' or '  mean: value'")
    except Exception as exc:  # yaml.YAMLError
        raise UserError(f"{path}: not a valid YAML latency table ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of layer keys to {{count, mean, std}}")
    return data


def reference_table(reference: str | Path, context: str, space: SearchSpace) -> LatencyTable:
    """Dynamic-OFA's Jetson Xavier NX tables by context name (`jetson_cpu`, `jetson_gpu`). `reference` is the
    shared reference directory (holding `dynamic-ofa/`) or `dynamic-ofa/` itself."""
    if context not in REFERENCE_CONTEXTS:
        raise UserError(f"unknown reference context '{context}': expected one of {', '.join(REFERENCE_CONTEXTS)}")
    root = Path(reference)
    for cand in (root / "dynamic-ofa" / "latency_lut", root / "latency_lut", root):
        path = cand / REFERENCE_CONTEXTS[context]
        if path.is_dir():
            return LatencyTable.from_dynamic_ofa(path, space, context)
    raise UserError(f"reference latency table for '{context}' not found under '{reference}' "
                    f"(expected dynamic-ofa/latency_lut/{REFERENCE_CONTEXTS[context]}; set DYNADNN_REFERENCE)")


def context_dirname(context: str) -> str:
    """File-system name of a context (`cpu:1t` -> `cpu_1t`)."""
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", context)


def load_tables(directory: str | Path, space: SearchSpace | None, contexts: Sequence[str],
                checkpoint: str | Path | None = None) -> dict[str, LatencyTable]:
    """Tables from a profile directory (`DIR/<context>/...`), one per context. `space`: the space they must
    be for (None: the one their `table.json` describes, the same for all). `checkpoint`: refuse tables of
    another space than the checkpoint's (`LatencyTable.check_checkpoint`)."""
    directory = Path(directory)
    out: dict[str, LatencyTable] = {}
    for ctx in contexts:
        path = directory / context_dirname(ctx)
        if not path.is_dir():
            raise UserError(f"profile '{directory}' has no table for context '{ctx}' (expected {path}/); "
                            f"run `dynadnn profile` with that context")
        table = out[ctx] = LatencyTable.from_dynamic_ofa(path, space, ctx)
        first = next(iter(out.values()))
        check_space(table.space, first.space, f"{path}: latency table '{ctx}'", f"'{first.context}' in the same profile")
        if checkpoint is not None:
            table.check_checkpoint(checkpoint)
    return out
