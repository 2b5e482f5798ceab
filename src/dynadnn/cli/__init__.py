"""The `dynadnn` command line. Each sub-command lives in its own module here with two functions:
`register(subparsers)` adds its parser (with a `--help` that explains) and sets `func=run`."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

# Sub-command modules, in --help order. A module that is not there (yet) is skipped.
COMMANDS = ["demo", "info", "train", "eval", "profile", "search", "family", "plot", "run", "serve", "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynadnn",
        description="Dynamic DNNs at run time: train or load an OFA super-network, profile this device, "
                    "search a Pareto family of sub-networks and run it under a runtime manager that meets "
                    "changing latency and accuracy targets.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"dynadnn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynadnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
