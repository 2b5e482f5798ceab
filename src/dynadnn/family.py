"""The family artifact: the Pareto set of sub-networks a runtime manager switches among.

A family directory holds two files, written atomically (weights first, then the JSON that names their
hash, so a reader never pairs a JSON with the wrong weights):

* `family.json`: format version, preset (the space's name) and `space` (its full description, so a family
  of a custom space reloads without the space's JSON file; files written before it load by preset name),
  the super-network checkpoint (path and sha256), the hardware contexts, provenance, and per member:
  architecture, predicted and measured top-1, predicted latency and measured latency (median and p95, ms)
  per context, MACs and parameters, and how many BN tensors `family.safetensors` holds for it; plus the
  full non-dominated archive of the search (architecture, predicted top-1 and latency per context).
* `family.safetensors`: each member's BN statistics calibrated for it, keys `m{i}/<bn key>` (e.g.
  `m0/blocks.3.dw_bn.running_mean`). A member listed in one file and not the other is refused on load, as
  are statistics that are not the member's own (keys and channels its architecture needs, finite numbers).

Every field is checked when the family is read (types; top-1 in 0..100; latencies finite, measured ones
positive; no member listed twice), with one-line `FamilyError`s naming the file and field; `save` runs the
same checks first, so a family `load` would refuse is never written.

Members are kept ordered by their latency in the first context (fastest first).
"""

from __future__ import annotations

import json
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import UserError
from .fileio import read_json_object, read_safetensors
from .supernet.bn import check_bn_stats
from .provenance import check_checkpoint, checkpoint_space, resolve_space, sha256_file
from .space import Arch, SearchSpace, load_space

FORMAT = "dynadnn.family/1"
JSON_NAME = "family.json"
WEIGHTS_NAME = "family.safetensors"


class FamilyError(UserError):
    """A family directory that is missing, malformed or does not fit what it is used with."""


class FamilyWarning(UserWarning):
    """A family that loads but may not match (e.g. its checkpoint hash differs)."""


@dataclass
class Member:
    """One sub-network of the family with its calibrated BN statistics and its metrics."""

    arch: Arch
    bn_stats: dict[str, Any] = field(default_factory=dict)  # name -> torch.Tensor
    top1_predicted: float | None = None
    top1_measured: float | None = None
    latency_predicted_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, Any]] = field(default_factory=dict)  # context -> {"median", "p95"[, "backend"]}
    macs: int = 0
    params: int = 0

    @property
    def top1(self) -> float | None:
        """Measured top-1 (percent) when there is one, else the predicted one."""
        return self.top1_measured if self.top1_measured is not None else self.top1_predicted

    def latency(self, context: str, stat: str = "median") -> float:
        """Measured latency in a context, else the predicted one (ms)."""
        if context in self.latency_ms:
            return float(self.latency_ms[context][stat])
        if context in self.latency_predicted_ms:
            return float(self.latency_predicted_ms[context])
        raise FamilyError(f"member {self.arch.short()} has no latency for context '{context}'")

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "top1_predicted": self.top1_predicted, "top1_measured": self.top1_measured,
                "latency_predicted_ms": self.latency_predicted_ms, "latency_ms": self.latency_ms,
                "macs": int(self.macs), "params": int(self.params), "bn_tensors": len(self.bn_stats)}


@dataclass
class Family:
    """`preset` is the search space's name; `search_space`, when given, is the space itself (required for a
    space that is not a shipped preset, unless the checkpoint at `checkpoint` records it)."""

    preset: str
    contexts: list[str]
    members: list[Member]
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    archive: list[dict[str, Any]] = field(default_factory=list)  # {"arch", "top1_predicted", "latency_predicted_ms"}
    provenance: dict[str, Any] = field(default_factory=dict)
    search_space: SearchSpace | None = None

    def __post_init__(self) -> None:
        if self.search_space is not None and self.search_space.name != self.preset:
            raise FamilyError(f"family: preset '{self.preset}' is not the name of its search space "
                              f"('{self.search_space.name}')")

    @property
    def space(self) -> SearchSpace:
        """The family's search space: the one it was given or loaded with, else the shipped preset `preset`
        names, else the space its checkpoint's metadata records under that name."""
        if self.search_space is None:
            self.search_space = self._find_space()
        return self.search_space

    def _find_space(self) -> SearchSpace:
        try:
            return load_space(self.preset)
        except UserError:
            pass
        if self.checkpoint:
            try:
                found = checkpoint_space(self.checkpoint)
            except UserError:
                found = None
            if found is not None and found.name == self.preset:
                return found
        raise FamilyError(f"family: '{self.preset}' is not a shipped preset and the family has no search space; "
                          "pass Family(..., search_space=<the checkpoint's SearchSpace>)")

    def sort(self) -> None:
        if self.contexts and self.members:
            self.members.sort(key=lambda m: m.latency(self.contexts[0]))

    # --- writing --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write `family.safetensors` then `family.json`, each atomically."""
        import torch
        from safetensors.torch import save_file

        from .fileio import atomic_write, make_dir, write_json

        self._validate_members()
        members_doc = [m.to_json() for m in self.members]
        head = {"contexts": list(self.contexts), "members": members_doc, "archive": self.archive,
                "checkpoint": {"path": self.checkpoint, "sha256": self.checkpoint_sha256}}
        _check_doc(head, "family")  # what `load` would refuse is never written
        for i, md in enumerate(members_doc):
            _member_from_json(md, f"family: members[{i}]", self.space, {})
        _check_members(self.members, self.contexts, self.space, "family")
        directory = make_dir(directory, "family directory", FamilyError)
        tensors = {}
        for i, m in enumerate(self.members):
            for key, value in m.bn_stats.items():
                tensors[f"m{i}/{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
        weights = directory / WEIGHTS_NAME
        atomic_write(weights, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
        doc = {
            "format": FORMAT, "preset": self.preset, "space": self.space.to_dict(), "contexts": list(self.contexts),
            "checkpoint": {"path": self.checkpoint, "sha256": self.checkpoint_sha256},
            "weights_sha256": sha256_file(weights),
            "provenance": {"written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **self.provenance},
            "members": members_doc,
            "archive": self.archive,
        }
        write_json(directory / JSON_NAME, doc, indent=1)
        return directory

    def _validate_members(self) -> None:
        space = self.space
        for i, m in enumerate(self.members):
            space.validate(m.arch)
            for ctx in self.contexts:
                if ctx not in m.latency_ms and ctx not in m.latency_predicted_ms:
                    raise FamilyError(f"family member {i}: no latency for context '{ctx}'")

    def check_checkpoint(self, checkpoint: str | Path, where: str = "family", stacklevel: int = 2) -> None:
        """Before using the family's members with a super-network checkpoint: refuse one of another search
        space (FamilyError naming the first differing field); warn (FamilyWarning) when its sha256 differs
        from the one the family was built from, since members' accuracy may then differ."""
        message = check_checkpoint(self.space, self.checkpoint_sha256, checkpoint, where, FamilyError, sha="warn")
        if message:
            warnings.warn(message + "; members' accuracy may differ", FamilyWarning, stacklevel=stacklevel + 1)

    # --- reading --------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, preset: str | None = None, checkpoint: str | Path | None = None,
             space: SearchSpace | None = None) -> "Family":
        """Read and validate a family. `preset`: refuse a family of another preset; `space`: refuse a family of
        another search space. `checkpoint`: refuse one of another search space, warn when its sha256 differs
        from the one the family was built from (`check_checkpoint`)."""
        directory = Path(directory)
        jpath = directory / JSON_NAME
        if not jpath.is_file():
            raise FamilyError(f"'{directory}' is not a family directory (no {JSON_NAME})")
        doc = read_json_object(jpath, error=FamilyError)
        if doc.get("format") != FORMAT:
            raise FamilyError(f"{jpath}: field 'format' is {doc.get('format')!r}; this dynadnn reads '{FORMAT}'")
        fam_space = resolve_space(doc, str(jpath), space, "family", FamilyError)
        if preset is not None and fam_space.name != preset:
            raise FamilyError(f"{jpath}: family is for preset '{fam_space.name}', not '{preset}'")
        contexts, members_doc, ck, archive = _check_doc(doc, str(jpath))
        stats = _read_member_stats(directory, doc, members_doc)
        members = [_member_from_json(md, f"{jpath}: members[{i}]", fam_space, stats[i])
                   for i, md in enumerate(members_doc)]
        _check_members(members, contexts, fam_space, str(jpath))
        fam = cls(fam_space.name, contexts, members, ck.get("path") or "", ck.get("sha256") or "",
                  archive, doc.get("provenance") or {}, fam_space)
        try:
            fam._validate_members()
        except UserError as exc:
            raise FamilyError(f"{jpath}: {exc}") from None
        if checkpoint is not None:
            fam.check_checkpoint(checkpoint, f"{jpath}: family", stacklevel=3)
        return fam


def _field(doc: Mapping[str, Any], key: str, kind: Any, source: str, required: bool = False) -> Any:
    """`doc[key]` of type `kind` (None when missing or null, unless `required`), as a FamilyError."""
    from .validate import field as check_field

    if doc.get(key) is None and not required:
        return None
    return check_field(doc, key, kind, source, error=FamilyError)


def _check_doc(doc: Mapping[str, Any], source: str) -> tuple[list[str], list, dict, list]:
    """family.json's top-level fields: (contexts, members, checkpoint, archive), each of the expected type."""
    contexts = _field(doc, "contexts", list, source, required=True)
    if not all(isinstance(c, str) and c for c in contexts) or len(set(contexts)) < len(contexts):
        raise FamilyError(f"{source}: field 'contexts': expected a list of distinct context names, "
                          f"got {json.dumps(contexts)[:60]}")
    members_doc = _field(doc, "members", list, source, required=True)
    if not members_doc:
        raise FamilyError(f"{source}: field 'members': expected a non-empty list")
    ck = _field(doc, "checkpoint", dict, source) or {}
    for key in ("path", "sha256"):
        _field(ck, key, str, f"{source}: field 'checkpoint'")
    _field(doc, "weights_sha256", str, source)
    _field(doc, "provenance", dict, source)
    archive = _field(doc, "archive", list, source) or []
    for i, entry in enumerate(archive):
        where = f"{source}: archive[{i}]"
        if not isinstance(entry, dict):
            raise FamilyError(f"{where}: expected an object with 'arch', 'top1_predicted', 'latency_predicted_ms'")
        _top1(entry, "top1_predicted", where)
        _latencies(_field(entry, "latency_predicted_ms", dict, where) or {}, f"{where}: field 'latency_predicted_ms")
    return contexts, members_doc, ck, archive


def _top1(doc: Mapping[str, Any], key: str, where: str) -> float | None:
    from .validate import number

    value = _field(doc, key, float, where)
    return None if value is None else number(value, f"{where}: field '{key}'", low=0, high=100, error=FamilyError)


def _latencies(values: Mapping[str, Any], where: str, positive: bool = False) -> dict[str, float]:
    """{context: ms} of finite numbers (> 0 when `positive`: measured times). `where` ends in an open quote."""
    from .validate import number

    return {str(k): number(v, f"{where}.{k}'", low=0.0 if positive else None, low_open=positive, error=FamilyError)
            for k, v in values.items()}


def _check_members(members: Sequence[Member], contexts: Sequence[str], space: SearchSpace, source: str) -> None:
    """No member twice; each with a positive latency in every context and its own complete, finite BN
    statistics (the member's tensors in family.safetensors: keys and channels as its architecture needs)."""

    seen: dict[Arch, int] = {}
    for i, m in enumerate(members):
        where = f"{source}: members[{i}]"
        key = space.canonical(m.arch)
        if key in seen:
            raise FamilyError(f"{where}: the same architecture as members[{seen[key]}] (a member listed twice)")
        seen[key] = i
        for ctx in contexts:
            if (ctx in m.latency_ms or ctx in m.latency_predicted_ms) and not m.latency(ctx) > 0:
                raise FamilyError(f"{where}: latency in '{ctx}' is {m.latency(ctx)} ms; expected a positive number")
        check_bn_stats(space, m.arch, m.bn_stats, f"{where}: in {WEIGHTS_NAME}", exact=True, error=FamilyError)


def _read_member_stats(directory: Path, doc: Mapping[str, Any], members_doc: list) -> list[dict[str, Any]]:
    """Each listed member's BN statistics (`m{i}/<key>` in the weights file). The two files must list the
    same members: a tensor of an unlisted member, or a listed member without its tensors (as many as
    `bn_tensors` says, at least one in files written before that field), is refused."""
    wpath = directory / WEIGHTS_NAME
    if not wpath.is_file():
        raise FamilyError(f"{directory}: {WEIGHTS_NAME} is missing (the members' BN statistics)")
    if doc.get("weights_sha256") and sha256_file(wpath) != doc["weights_sha256"]:
        raise FamilyError(f"{wpath}: does not match {JSON_NAME} (field 'weights_sha256'); re-run the search")
    n = len(members_doc)
    groups: dict[int, dict[str, Any]] = {}
    for key, value in read_safetensors(wpath, FamilyError)[0].items():
        m = re.fullmatch(r"m(\d+)/(.+)", key)
        if m is None or int(m.group(1)) >= n:
            raise FamilyError(f"{wpath}: tensor '{key}' belongs to no member of {JSON_NAME}, which lists {n} "
                              f"(m0..m{n - 1}); the two files do not match")
        groups.setdefault(int(m.group(1)), {})[m.group(2)] = value
    for i, md in enumerate(members_doc):
        want = md.get("bn_tensors") if isinstance(md, dict) else None
        got = len(groups.get(i, {}))
        if want is not None and (isinstance(want, bool) or not isinstance(want, int) or want < 0):
            raise FamilyError(f"{directory / JSON_NAME}: members[{i}]: field 'bn_tensors' must be a count, got {want!r}")
        if (got != want) if want is not None else (got == 0):
            raise FamilyError(f"{wpath}: holds {got} BN tensor(s) for member m{i}, but {JSON_NAME} lists that member"
                              f"{f' with {want}' if want is not None else ''}; the two files do not match")
    return [groups.get(i, {}) for i in range(n)]


def _member_from_json(md: Any, where: str, space: SearchSpace, stats: dict[str, Any]) -> Member:
    if not isinstance(md, dict) or "arch" not in md:
        raise FamilyError(f"{where}: expected an object with 'arch'")
    try:
        arch = space.validate(Arch.from_dict(md["arch"]))
    except UserError as exc:
        raise FamilyError(f"{where}: {exc}") from None
    from .validate import count

    lat = _field(md, "latency_ms", dict, where) or {}
    measured: dict[str, dict[str, Any]] = {}
    for ctx, v in lat.items():
        if not isinstance(v, dict) or "median" not in v or "p95" not in v:
            raise FamilyError(f"{where}: field 'latency_ms.{ctx}' must have 'median' and 'p95'")
        backend = _field(v, "backend", str, f"{where}: field 'latency_ms.{ctx}'")
        measured[str(ctx)] = {**_latencies({s: x for s, x in v.items() if s != "backend"},
                                           f"{where}: field 'latency_ms.{ctx}", positive=True),
                              **({"backend": backend} if backend is not None else {})}
    predicted = _latencies(_field(md, "latency_predicted_ms", dict, where) or {},
                           f"{where}: field 'latency_predicted_ms")
    macs, params = (count(_field(md, k, int, where) or 0, f"{where}: field '{k}'", error=FamilyError)
                    for k in ("macs", "params"))
    return Member(arch, stats, _top1(md, "top1_predicted", where), _top1(md, "top1_measured", where),
                  predicted, measured, macs, params)


def pick_spread(latency: Sequence[float], accuracy: Sequence[float], k: int) -> list[int]:
    """Indices of `k` points of a front spread evenly in log-latency (not k neighbours): the fastest, the
    most accurate, and the points nearest to evenly spaced targets in between, without repeats. Latencies
    at or below 1 ns (a corrected prediction can go negative on a tiny network) count as 1 ns."""
    import numpy as np

    lat = np.asarray(latency, float)
    n = len(lat)
    if n <= k:
        return list(np.argsort(lat))
    order = np.argsort(lat)
    log_lat = np.log(np.maximum(lat, 1e-6))
    targets = np.linspace(log_lat[order[0]], log_lat[order[-1]], k)
    chosen: list[int] = []
    for t in targets:
        left = [i for i in order if i not in chosen]
        chosen.append(min(left, key=lambda i: abs(log_lat[i] - t)))
    return sorted(chosen, key=lambda i: lat[i])


def archive_entries(archs: Sequence[Arch], top1: Sequence[float], latency: Mapping[str, Sequence[float]]) -> list[dict]:
    return [{"arch": a.to_dict(), "top1_predicted": round(float(top1[i]), 4),
             "latency_predicted_ms": {c: round(float(v[i]), 5) for c, v in latency.items()}}
            for i, a in enumerate(archs)]
