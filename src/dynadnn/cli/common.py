"""What several commands share: a progress bar the library reports to, and list parsing."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from ..errors import UserError


@contextmanager
def progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A `progress(task, done, total)` callback for the library's long work, shown as rich progress bars
    (one per task name) that disappear when the work is done."""
    from rich.progress import Progress

    tasks: dict[str, int] = {}
    with Progress(transient=True) as bar:
        def progress(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], completed=done, total=total)

        yield progress


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated integers, got '{text}'") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"{what}: expected positive integers, got '{text}'")
    return values


def parse_names(text: str, what: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise UserError(f"{what}: expected a comma-separated list, got '{text}'")
    return names


class _WithDefaults(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def add_command(sub, name: str, doc: str, help: str, examples: Sequence[str] = (),
                show_defaults: bool = False) -> argparse.ArgumentParser:
    """A sub-command whose `--help` is its module's docstring (`doc`) and ends with examples."""
    return sub.add_parser(name, help=help, description=doc.strip(), epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                          formatter_class=_WithDefaults if show_defaults else argparse.RawDescriptionHelpFormatter)


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """The super-network a command reads: a checkpoint, and the preset of an OFA file that has no metadata."""
    p.add_argument("checkpoint", help="super-network checkpoint: a .safetensors file, an OFA .pth, or zoo:NAME")
    p.add_argument("--preset", default=None,
                   help="search-space preset of an OFA .pth (default: guessed from the tensor shapes)")
