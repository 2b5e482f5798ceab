"""The `dynadnn` command line. Each sub-command lives in its own module here with two functions:
`register(subparsers)` adds its parser (with a `--help` that explains) and sets `func=run`."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from ..errors import UserError

# Sub-command modules, in --help order.
COMMANDS = ["demo", "info", "train", "eval", "profile", "search", "plot", "run"]


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (`dynadnn: error: --runs: invalid int value: 'nan'`, exit 2)
    like every other error, instead of a usage block first."""

    def error(self, message: str):
        self.exit(2, f"dynadnn: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dynadnn",
        description="Dynamic DNNs at run time: train or load an OFA super-network, profile this device, "
                    "search a Pareto family of sub-networks and run it under a runtime manager that meets "
                    "changing latency and accuracy targets.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def as_flags(message: str, parser: argparse.ArgumentParser, command: str | None) -> str:
    """The library names a bad value by its parameter (`eval_images: expected ...`); a CLI user typed a flag
    (`--eval-images`), so a message that starts with a parameter of the command starts with its flag."""
    match = re.match(r"([a-z][a-z0-9_]*):", message)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if not match or sub is None or command not in sub.choices:
        return message
    for action in sub.choices[command]._actions:
        if action.dest == match.group(1) and action.option_strings:
            return action.option_strings[-1] + message[match.end() - 1:]
    return message


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a malformed command line (2, one line already printed)
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"dynadnn: error: {as_flags(str(exc), parser, args.command)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynadnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
