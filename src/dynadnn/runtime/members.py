"""Where the manager's members come from: a family directory (the search's artifact), or, when there is
none, a default hand-picked ladder from a super-network checkpoint (`zoo:animals`, a path), or
`random:PRESET` (a randomly initialised super-network: latency is real, accuracy is chance; for tests).

Hand-picked members step every elastic dimension together from the smallest to the largest network
(depth, expand ratio, kernel size, resolution), each BN-calibrated on training images (OFA's recipe) and
its top-1 measured on the dataset's test split, so the ladder is monotone in cost and, for a trained
super-network, in accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data import dataset_of, load_dataset
from ..errors import UserError
from ..evaluate import calibrate_members, top1
from ..space import Arch, SearchSpace
from ..supernet import SuperNet
from ..supernet.bn import check_bn_stats
from ..validate import count, number


@dataclass
class FamilySource:
    supernet: SuperNet
    archs: list[Arch]
    bn_stats: list[dict[str, Tensor]]
    top1: list[float]
    names: list[str]
    dataset: str
    origin: dict[str, Any] = field(default_factory=dict)

    def check(self) -> "FamilySource":
        """Refuse members that cannot be served faithfully: lists of different lengths, a top-1 that is not a
        finite percentage, and BN statistics missing (a member would silently run on the super-network's
        shared statistics, i.e. uncalibrated), non-finite, negative variances or of the wrong width."""
        n = len(self.archs)
        if not n:
            raise UserError("family: no members to serve")
        for what, seq in (("bn_stats", self.bn_stats), ("top1", self.top1), ("names", self.names)):
            if len(seq) != n:
                raise UserError(f"family: {n} members but {len(seq)} entries in {what}")
        for i, (arch, stats, acc) in enumerate(zip(self.archs, self.bn_stats, self.top1)):
            number(acc, f"family: member {i}: top1", low=0.0, high=100.0)
            check_bn_stats(self.supernet.space, arch, stats, f"family: member {i}")
        return self

    @classmethod
    def from_family(cls, family, supernet: SuperNet | None = None, *, dataset: str | None = None,
                    origin: dict[str, Any] | None = None, base: Path | None = None) -> "FamilySource":
        """The members of an in-memory `Family` on `supernet` (by default the family's checkpoint, loaded;
        a relative path is taken from `base`). Members without a measured top-1 are measured on `dataset`."""
        meta: dict[str, Any] = {}
        if supernet is None:
            supernet, meta = _family_supernet(family, base)
        dataset = dataset or dataset_of(meta, dataset_of(family.provenance, "animals"))
        archs = [m.arch for m in family.members]
        bn = [dict(m.bn_stats) for m in family.members]
        data, accs = None, []
        for m, a, b in zip(family.members, archs, bn):
            if m.top1 is None:
                data = data or load_dataset(dataset)
                accs.append(top1(supernet, a, data, b))
            else:
                accs.append(float(m.top1))
        return cls(supernet.eval(), archs, bn, accs, [f"m{i}" for i in range(len(archs))], dataset,
                   origin or {"kind": "family", "checkpoint": family.checkpoint})


def _family_supernet(family, base: Path | None) -> tuple[SuperNet, dict]:
    from ..supernet.checkpoint import load_checkpoint

    if not family.checkpoint:
        raise UserError("family: field 'checkpoint.path' is empty; pass the super-network to rebuild its members")
    ck = family.checkpoint
    if base is not None and not ck.startswith("zoo:") and not Path(ck).is_absolute() and not Path(ck).exists():
        ck = str((base / ck).resolve())
    return load_checkpoint(ck, preset=family.space)


def _pick(choices: tuple, frac: float):
    return choices[min(len(choices) - 1, int(round(frac * (len(choices) - 1))))]


def hand_picked_archs(space: SearchSpace, k: int = 5) -> list[Arch]:
    """`k` architectures from the smallest to the largest, every dimension growing together."""
    if k < 2:
        raise UserError(f"members: expected at least 2 hand-picked members, got {k}")
    archs: list[Arch] = []
    for j in range(k):
        f = j / (k - 1)
        arch = Arch((_pick(space.ks_choices, f),) * space.n_blocks, (_pick(space.e_choices, f),) * space.n_blocks,
                    (_pick(space.d_choices, f),) * space.n_stages, _pick(space.resolutions, f))
        arch = space.canonical(arch)
        if arch not in archs:
            archs.append(arch)
    return archs


MAX_MEMBERS = 64  # hand-picked members: each is made resident on every backend and thread count


def family_kind(spec: str | Path) -> str:
    """What a family spec names: "family" (a directory with family.json), "random", "zoo" or "checkpoint" (an
    existing path); anything else is a one-line `UserError` naming `family`. Cheap: nothing is loaded."""
    text = str(spec) if isinstance(spec, (str, Path)) else None
    if not text or not text.strip():
        raise UserError(f"family: expected a family directory, a checkpoint, zoo:NAME or random:PRESET, got {spec!r:.60}")
    if text.startswith("random:"):
        from ..space import load_space

        load_space(text[len("random:"):])  # an unknown preset: refused now, not after the run has started
        return "random"
    if text.startswith("zoo:"):
        from .. import zoo  # noqa: F401 - registers the zoo: scheme
        from ..fileio import resolve_scheme

        resolve_scheme(text)  # an unknown model: refused now
        return "zoo"
    path = Path(text)
    try:
        if path.is_dir() and (path / "family.json").is_file():
            return "family"
        exists = path.exists()
    except OSError as exc:
        shown = text if len(text) <= 80 else text[:40] + "..." + text[-20:]
        raise UserError(f"family: cannot read '{shown}' ({exc.strerror or exc})") from None
    if not exists:
        raise UserError(f"family '{text[:120]}': not a family directory, a checkpoint file, zoo:NAME or random:PRESET")
    return "checkpoint"


def load_family(spec: str, dataset: str = "animals", k: int = 5, calib_images: int = 1000) -> FamilySource:
    """Members from a family directory, a checkpoint (`zoo:NAME` or a path) or `random:PRESET`."""
    kind = family_kind(spec)
    count(k, "members", low=2, high=MAX_MEMBERS)
    count(calib_images, "calib_images", low=1)
    spec, path = str(spec), Path(spec)
    if kind == "family":
        from ..family import Family

        fam = Family.load(path)
        return FamilySource.from_family(fam, base=path, origin={"kind": "family", "path": str(path),
                                                                "checkpoint": fam.checkpoint})
    if kind == "random":
        from ..space import load_space

        torch.manual_seed(0)
        supernet = SuperNet(load_space(spec[len("random:"):])).eval()
        origin = {"kind": "random", "preset": supernet.space.name}
    else:
        from ..supernet.checkpoint import load_checkpoint

        supernet, meta = load_checkpoint(spec)
        dataset = dataset_of(meta, dataset)
        origin = {"kind": "hand-picked", "checkpoint": spec}
        cached = _cached_hand_picked(spec, dataset, k, supernet)
        if cached is not None:
            return cached
    data = load_dataset(dataset)
    if data.in_channels != supernet.space.in_channels:
        raise UserError(f"dataset '{dataset}' has {data.in_channels} channels; preset '{supernet.space.name}' "
                        f"expects {supernet.space.in_channels}")
    archs = hand_picked_archs(supernet.space, k)
    bn = calibrate_members(supernet, archs, data.calibration_batches(calib_images))
    accs = [top1(supernet, a, data, b) for a, b in zip(archs, bn)]
    source = FamilySource(supernet, archs, bn, accs, [f"m{i}" for i in range(len(archs))], dataset, origin)
    if origin["kind"] == "hand-picked":
        _save_hand_picked(spec, dataset, k, source)
    return source


# --- a hand-picked ladder is saved as a real family directory, so the next run skips calibration -------
def _cache_dir(spec: str, dataset: str, k: int) -> Path | None:
    import os

    from ..provenance import sha256_file
    from ..supernet.checkpoint import resolve_checkpoint_path

    try:
        sha = sha256_file(resolve_checkpoint_path(spec))
    except Exception:  # noqa: BLE001 - no cache then
        return None
    root = Path(os.environ.get("DYNADNN_CACHE", Path.home() / ".cache" / "dynadnn"))
    return root / "families" / f"{sha[:16]}-{dataset.replace(':', '_').replace('/', '_')}-k{k}"


def _cached_hand_picked(spec: str, dataset: str, k: int, supernet: SuperNet) -> FamilySource | None:
    d = _cache_dir(spec, dataset, k)
    if d is None or not (d / "family.json").is_file():
        return None
    try:
        from ..family import Family

        fam = Family.load(d, preset=supernet.space.name)
    except UserError:
        return None
    if any(m.top1 is None for m in fam.members):
        return None
    return FamilySource(supernet, [m.arch for m in fam.members], [dict(m.bn_stats) for m in fam.members],
                        [float(m.top1) for m in fam.members], [f"m{i}" for i in range(len(fam.members))], dataset,
                        {"kind": "hand-picked", "checkpoint": spec, "cache": str(d)})


def _save_hand_picked(spec: str, dataset: str, k: int, source: FamilySource) -> None:
    d = _cache_dir(spec, dataset, k)
    if d is None:
        return
    try:
        from ..family import Family, Member
        from ..provenance import sha256_file
        from ..supernet.checkpoint import resolve_checkpoint_path

        members = [Member(a, b, top1_measured=t) for a, b, t in zip(source.archs, source.bn_stats, source.top1)]
        Family(source.supernet.space.name, [], members, checkpoint=spec,
               checkpoint_sha256=sha256_file(resolve_checkpoint_path(spec)),
               provenance={"made_by": "dynadnn.runtime.members (hand-picked ladder)", "dataset": dataset},
               search_space=source.supernet.space).save(d)
    except (OSError, UserError):
        pass  # a cache that cannot be written only costs time
