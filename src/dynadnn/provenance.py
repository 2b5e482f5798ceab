"""What an artifact records about what it was built for: the search space and the super-network checkpoint.

A family (`family.json`), an accuracy predictor (`predictor.json`) and a latency table (`table.json`) carry,
as checkpoints do, the full description of their search space (`"space": SearchSpace.to_dict()`, next to
the space's name under `"preset"`) and the sha256 of the checkpoint they were built from. A custom space
(one that is not a shipped preset) therefore reloads without its JSON file, and an artifact used with a
checkpoint of another space is refused with the first field in which the two spaces differ.

Files written before the description was embedded have only `"preset"`; they still load, by preset name.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError
from .space import SearchSpace, load_space


_SHA_CACHE: dict[tuple, str] = {}
_SETTLED_S = 2.0  # a file modified this recently is not cached: a rewrite within one mtime tick would look unchanged


def sha256_file(path: str | Path) -> str:
    """The file's sha256. Cached on (resolved path, device, inode, size, mtime_ns), so that one command that
    records a checkpoint in several artifacts reads it once; a file modified in the last seconds is hashed
    each time."""
    resolved = Path(path).resolve()
    st = os.stat(resolved)
    key = (str(resolved), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _SHA_CACHE:
        return _SHA_CACHE[key]
    h = hashlib.sha256()
    with open(resolved, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if time.time_ns() - st.st_mtime_ns > _SETTLED_S * 1e9:
        if len(_SHA_CACHE) >= 64:
            _SHA_CACHE.clear()
        _SHA_CACHE[key] = digest
    return digest


def checkpoint_ref(checkpoint: str | Path | None) -> tuple[str, str]:
    """(the name an artifact records for a checkpoint, its sha256): `zoo:NAME` as is, a path made absolute;
    ("", "") for none (a super-network that exists only in memory)."""
    from .supernet.checkpoint import resolve_checkpoint_path

    if not checkpoint:
        return "", ""
    path = resolve_checkpoint_path(checkpoint)
    name = str(checkpoint) if str(checkpoint).startswith("zoo:") else str(path.resolve())
    return name, sha256_file(path)


def space_of(doc: Mapping[str, Any], source: str, error: type[UserError] = UserError) -> SearchSpace:
    """The search space an artifact's JSON describes: its embedded `space` (preferred) or, in files written
    before spaces were embedded, the preset its `preset` field names."""
    raw = doc.get("space")
    if raw is not None:
        if not isinstance(raw, Mapping):
            raise error(f"{source}: field 'space' must be an object (a search space description)")
        try:
            space = SearchSpace.from_dict(raw, f"{source}: field 'space'")
        except UserError as exc:
            raise error(str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise error(f"{source}: field 'space' is not a valid search space description ({exc})") from None
        name = doc.get("preset")
        if name is not None and name != space.name:
            raise error(f"{source}: field 'preset' is {name!r} but field 'space' describes '{space.name}'")
        return space
    name = doc.get("preset")
    if not isinstance(name, str) or not name:
        raise error(f"{source}: field 'space' (or, in files of older versions, 'preset') is missing")
    try:
        return load_space(name)
    except UserError as exc:
        raise error(f"{source}: field 'preset': {exc} (the file has no 'space' description)") from None


def space_difference(a: SearchSpace, b: SearchSpace) -> tuple[str, str, str] | None:
    """Where two spaces first differ (their free-text descriptions aside; their names last, so that a shape
    difference is named first): `(field, a's value, b's value)`, e.g. `("stages[1].width", "32", "40")`;
    None when they are the same space."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("description", None)
        d["name"] = d.pop("name")
    return _first_difference(da, db, "")


def _first_difference(x: Any, y: Any, path: str) -> tuple[str, str, str] | None:
    if isinstance(x, dict) and isinstance(y, dict):
        for key in list(x) + [k for k in y if k not in x]:
            where = f"{path}.{key}" if path else key
            if key not in x or key not in y:
                return where, _show(x[key]) if key in x else "missing", _show(y[key]) if key in y else "missing"
            diff = _first_difference(x[key], y[key], where)
            if diff:
                return diff
        return None
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)):
            diff = _first_difference(u, v, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if x == y else (path, _show(x), _show(y))


def _show(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_space(doc: Mapping[str, Any], source: str, given: SearchSpace | None, what: str,
                  error: type[UserError] = UserError) -> SearchSpace:
    """The space to use an artifact with. Without `given`, the one the file describes. With `given`, the file
    must be for that space (a file of an older version, which records only a preset name, must name it);
    `what` names the artifact in the error (`family`, `predictor`, `latency table`)."""
    if given is not None and not doc.get("space"):
        name = doc.get("preset")
        if name is not None and name != given.name:
            raise error(f"{source}: {what} is for preset '{name}', not '{given.name}'")
        return given
    space = space_of(doc, source, error)
    if given is not None:
        if space.name != given.name:
            raise error(f"{source}: {what} is for preset '{space.name}', not '{given.name}'")
        check_space(space, given, f"{source}: {what}", "the given one", error)
        return given
    return space


def check_space(space: SearchSpace, other: SearchSpace, where: str, other_name: str,
                error: type[UserError] = UserError) -> None:
    """Refuse `other` unless it is the same space as `space`, naming the first field that differs."""
    diff = space_difference(space, other)
    if diff:
        field, mine, theirs = diff
        raise error(f"{where} is for a different search space than {other_name} (space field '{field}': "
                    f"{mine} vs {theirs})")


def checkpoint_space(path: str | Path) -> SearchSpace | None:
    """The search space a checkpoint records in its metadata (its description, else its preset), or None for
    files that record none (OFA's `.pth`)."""
    from .errors import CheckpointError
    from .supernet.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(path)
    if not meta.get("space") and not meta.get("preset"):
        return None
    return space_of(meta, f"{path} metadata", CheckpointError)


def check_checkpoint(space: SearchSpace, recorded_sha256: str, checkpoint: str | Path, where: str,
                     error: type[UserError] = UserError, sha: str = "error", hint: str = "") -> str | None:
    """Compare an artifact with the checkpoint it is about to be used with. Its space must be the one the
    checkpoint records (else `error` naming the first difference). Its recorded sha256, when it has one, must
    be the file's: `sha="error"` raises, `"warn"` returns the one-line message instead (the caller warns),
    `"ignore"` skips the hash; `hint` is appended to that message. Returns None when all is well."""
    from .supernet.checkpoint import resolve_checkpoint_path

    path = resolve_checkpoint_path(checkpoint)
    other = checkpoint_space(path)
    if other is not None:
        check_space(space, other, where, f"checkpoint '{checkpoint}'", error)
    if not recorded_sha256 or sha == "ignore":
        return None
    actual = sha256_file(path)
    if actual == recorded_sha256:
        return None
    message = (f"{where} was built from checkpoint sha256 {recorded_sha256[:12]}..., but '{checkpoint}' has "
               f"{actual[:12]}...{hint}")
    if sha == "warn":
        return message
    raise error(message)
