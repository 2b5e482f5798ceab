"""`dynadnn plot-front`: accuracy vs latency per context for a family, members highlighted (PNG).

Draw one panel per hardware context: the search's non-dominated archive (predicted), and the family members'
predicted and measured points.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from .common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "plot-front", __doc__, "plot a family's accuracy vs latency per context (PNG)",
                    ["dynadnn plot-front runs/family",
                     "dynadnn plot-front runs/family --out front.png --title 'my family'"])
    p.add_argument("family", help="family directory (family.json + family.safetensors)")
    p.add_argument("--out", help="PNG path (default: FAMILY/front.png)")
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..family import Family
    from ..report import plot_front

    fam = Family.load(args.family)
    out = plot_front(fam, args.out or Path(args.family) / "front.png", args.title)
    print(f"wrote {out}")
    return 0
