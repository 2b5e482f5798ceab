"""The one place that loads the C extension (`_native.c`: the serving path, the latency monitor and the
`feedback` control law in C). Everything else asks this module, never `_native` itself.

`core` is the loaded C module, or None when the pure-Python references run instead (`serving.PyServing`,
`monitors.PyLatencyMonitor`, `policies.feedback.FeedbackPolicy`): both make identical decisions, C only
costs less per inference.

Environment: `DYNADNN_NATIVE=0` forces the pure-Python references everywhere (`make test` runs the
runtime tests a second time that way); any other value, or unset, uses C whenever it is built. It is read once, when
`dynadnn.runtime` is first imported: set it before starting the process.
"""

from __future__ import annotations

import os
from types import ModuleType

ENV = "DYNADNN_NATIVE"


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(ENV, "").strip() == "0":
        return None, f"pure Python (forced by {ENV}=0)"
    try:
        from . import _native
    except ImportError:  # built without a C compiler: the references run
        return None, ("pure Python (the C extension was not built: install a C compiler and reinstall for a "
                      "~5x cheaper per-inference path)")
    return _native, "native (C)"


core, _why = _load()
NATIVE = core is not None


def active() -> str:
    """Which per-inference path runs: "native" (C) or "python" (the references)."""
    return "native" if NATIVE else "python"


def describe() -> str:
    """One line for people: the active path and, for Python, why (`dynadnn info` prints it)."""
    return _why


__all__ = ["ENV", "NATIVE", "core", "active", "describe"]
