"""`dynadnn info`: presets, their search-space sizes, shipped models, and whether the runtime manager's

List the search-space presets with their size and choices, the shipped models, and whether the runtime
manager's serving path is native (C) or the pure-Python fallback.
"""

from __future__ import annotations

import argparse

from ..runtime import native
from ..space import list_presets, load_space
from .common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "info", __doc__, "list presets (search spaces), shipped models and the runtime's build",
                    ["dynadnn info"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in list_presets():
        s = load_space(name)
        print(f"{name:16s} {s.in_channels}x{s.resolutions[0]}..{s.resolutions[-1]}px  classes={s.n_classes}  "
              f"ks={list(s.ks_choices)} e={list(s.e_choices)} d={list(s.d_choices)}  size={s.size():.2e}")
    try:
        from ..zoo import list_models
    except ImportError:
        return 0
    for name, desc in list_models().items():
        print(f"zoo:{name:12s} {desc}")
    print("runtime serving path: " + native.describe())
    return 0
