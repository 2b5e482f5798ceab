"""Reading and writing the project's artifacts: atomic writes, JSON and safetensors with one-line errors.

A leaf module: it imports only `dynadnn.errors`, the standard library and (lazily) safetensors, so every
layer can use it. It also keeps the registry of `SCHEME:NAME` artifact paths (`zoo:animals`): a higher
layer registers its resolver at import (`dynadnn.zoo` registers `zoo`, and `import dynadnn` imports it),
so the readers below it never import that layer. Writers go through `atomic_write` (a temporary file in the target's folder, renamed onto
it), so a crash never leaves half an artifact. Readers turn every way a file can be unreadable into one
`UserError` line (or the subclass the caller passes as `error`) that names the file and the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import UserError

_SCHEMES: dict[str, Callable[[str], Path]] = {}


def register_scheme(scheme: str, resolver: Callable[[str], Path]) -> None:
    """Accept `SCHEME:NAME` wherever an artifact path is resolved (`resolve_scheme`): `resolver(NAME)` returns
    the file, or raises a one-line `UserError`."""
    if not scheme.isidentifier() or len(scheme) < 2:  # one letter would shadow a Windows drive ("C:")
        raise ValueError(f"path scheme must be an identifier of 2+ characters, got {scheme!r}")
    _SCHEMES[scheme] = resolver


def resolve_scheme(path: str | Path) -> Path | None:
    """The file a registered `SCHEME:NAME` names (its resolver's answer), or None for any other path."""
    scheme, sep, name = str(path).partition(":")
    resolver = _SCHEMES.get(scheme) if sep else None
    return None if resolver is None else resolver(name)


def make_dir(directory: str | Path, what: str = "directory", error: type[UserError] = UserError) -> Path:
    """Create `directory` (and its parents) for an artifact; a one-line `error` naming it when that fails."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{directory}: cannot create the {what} ({exc.strerror})") from None
    return directory


def atomic_write(path: str | Path, write: Callable[[str], Any], error: type[UserError] = UserError) -> Path:
    """Call `write(tmp_path)` then rename onto `path`: readers never see a partial file. A folder that cannot
    be made or written raises `error`; anything `write` raises propagates, and the temporary file is gone."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise error(f"{path.parent}: cannot write here ({exc.strerror})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the artifact should be as readable as any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str, error: type[UserError] = UserError) -> Path:
    """Write `text` to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), error)


def write_json(path: str | Path, doc: Any, error: type[UserError] = UserError, **dumps: Any) -> Path:
    """Write `json.dumps(doc, **dumps)` to `path` atomically. The text is built before anything touches the
    disk, so a document that cannot be serialised leaves no file behind."""
    return write_text(path, json.dumps(doc, **dumps), error)


def parse_json(text: str, source: str, error: type[UserError] = UserError) -> Any:
    """`json.loads(text)`, a syntax error becoming one line: `SOURCE: not valid JSON (why at line N)`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise error(f"{source}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise error(f"{source}: not valid JSON ({(str(exc).splitlines() or ['a bad value'])[0][:80]})") from None


def read_json_object(path: str | Path, expect_format: str | None = None,
                     error: type[UserError] = UserError) -> dict[str, Any]:
    """The JSON object in `path`; with `expect_format`, its `format` field must equal it."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not valid JSON (not UTF-8 text)") from None
    doc = parse_json(text, str(path), error)
    if not isinstance(doc, dict):
        raise error(f"{path}: expected a JSON object")
    if expect_format is not None and doc.get("format") != expect_format:
        raise error(f"{path}: field 'format' is {doc.get('format')!r}; expected '{expect_format}'")
    return doc


def read_safetensors(path: str | Path, error: type[UserError] = UserError,
                     tensors: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    """`(tensors, metadata)` of a safetensors file, on the CPU; with `tensors=False` only its header's
    metadata is read (the tensor dict is empty). An unreadable or malformed file raises `error`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            out = {k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}
    except (SafetensorError, OSError) as exc:
        raise error(f"{path}: not a readable safetensors file ({exc})") from None
    return out, meta


def _oserror(path: Path, exc: OSError, doing: str) -> str:
    shown = str(path) if len(str(path)) <= 120 else str(path)[:60] + "..." + str(path)[-40:]
    return f"{shown}: cannot {doing} ({exc.strerror or exc})"


@contextmanager
def output_dir(out: str | Path, kind: str, marker: str, overwrite: bool = False,
               error: type[UserError] = UserError) -> Iterator[Path]:
    """Write a whole result folder or nothing. Yields a fresh temporary folder beside `out`; when the block
    returns, the folder is renamed onto `out` (an earlier `out`, when `overwrite`, is replaced whole, never
    mixed with the new files); when it raises, or on Ctrl-C, the temporary folder is removed and `out` is as
    it was. `out` holding a result of this `kind` (its `marker` file) or any other files is refused unless
    `overwrite`. An `out` that cannot be written is refused before the block starts, i.e. before the work."""
    out = Path(out)
    try:
        _check_out(out, kind, marker, overwrite, error)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name[:32]}.", suffix=".partial", dir=out.parent))
    except OSError as exc:
        raise error(_oserror(out, exc, "write the output folder here")) from None
    try:
        yield tmp
        replace_dir(tmp, out, error)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(out: str | Path, error: type[UserError] = UserError) -> None:
    """Refuse an output folder that replacing whole (`--overwrite`) would lose more than a result: the
    working, home or root folder, or one holding the working or home folder. A path that cannot be resolved
    passes (the caller names that problem)."""
    try:
        resolved = Path(out).resolve()
        risky = Path.cwd().is_relative_to(resolved) or Path.home().is_relative_to(resolved)
    except (OSError, RuntimeError, ValueError):  # ValueError: a NUL in the path; RuntimeError: no home
        return
    if risky:
        shown = str(out) if len(str(out)) <= 120 else str(out)[:60] + "..." + str(out)[-40:]
        raise error(f"out: '{shown}' is the working, home or root folder, or holds the current directory; "
                    "refusing to replace it (choose a folder for the results)")


def _check_out(out: Path, kind: str, marker: str, overwrite: bool, error: type[UserError]) -> None:
    if overwrite or out.exists():  # an existing `out` is replaced whole when the block returns
        check_replaceable(out, error)
    if out.exists() and not out.is_dir():
        raise error(f"{out}: exists and is not a directory (expected a folder for the {kind})")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = f"a {kind} ({marker})" if (out / marker).exists() else "other files"
        raise error(f"{out}: already holds {what}; pass --overwrite to replace the folder, or choose a new one")


def replace_dir(new: Path, out: Path, error: type[UserError] = UserError) -> None:
    """Move the folder `new` onto `out`, replacing an earlier `out` whole (restored if the move fails)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.{os.getpid()}.old"
        os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError as exc:
        if old is not None:
            os.replace(old, out)
        raise error(_oserror(out, exc, "move the finished output into place")) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
