"""Reading the project's JSON artifacts with one-line errors that name the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UserError


def read_json_object(path: Path, expect_format: str | None = None, error: type[UserError] = UserError) -> dict[str, Any]:
    """The JSON object in `path`; with `expect_format`, its `format` field must equal it."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise error(f"{path}: expected a JSON object")
    if expect_format is not None and doc.get("format") != expect_format:
        raise error(f"{path}: field 'format' is {doc.get('format')!r}; expected '{expect_format}'")
    return doc
