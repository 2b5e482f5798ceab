"""One place that checks a value given to dynadnn: numbers, counts, choices, and what this machine can give.

Every library entry point and every file reader checks its inputs with these, so Python callers and the CLI
get the same one-line errors. A message starts with the name of what was wrong (a parameter such as
`eval_images`, or `FILE: field 'x'`), then says what was expected and what came:

    number(lr, "lr", low=0, low_open=True)         # finite, > 0
    count(runs, "runs", low=1)                     # an int >= 1 (bool refused)
    threads(n, "threads")                          # 1..the CPUs this process may run on
    seconds(duration, "duration_s")                # finite, > 0, at most MAX_SECONDS
    choice(device, "device", ("cpu", "cuda"))

The CLI prints a parameter's name as the flag the user typed (`--eval-images`), see `cli.as_flags`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Sequence

from .errors import UserError

MAX_SECONDS = 7 * 24 * 3600.0  # a duration past a week is a typo, not a plan
MAX_PROCESSES = 64  # competing processes one scenario phase may start (the machine has a handful of CPUs)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), which may be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, error: type[UserError] = UserError) -> float:
    """A finite real number within [low, high] (open ends with `low_open` / `high_open`); returns it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name}: expected a number, got {_show(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise error(f"{name}: expected a finite number, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        raise error(f"{name}: expected a number {' and '.join(p for p in (lo, hi) if p)}, got {value:g}")
    return value


def count(value: Any, name: str, *, low: int = 0, high: int | None = None,
          error: type[UserError] = UserError, why: str | None = None) -> int:
    """An integer (not a bool, not a float with a fraction) within [low, high]. `why` words an out-of-range
    message (`members: expected at least 2 members to switch among (an integer in 2..32), got 1`)."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise error(f"{name}: expected an integer, got {_show(value)}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise error(f"{name}: expected {why} (an integer {bound}), got {value}" if why else
                    f"{name}: expected an integer {bound}, got {value}")
    return value


def threads(value: Any, name: str = "threads", error: type[UserError] = UserError) -> int:
    """A thread count this process can run: 1..its available CPUs (more would only oversubscribe them)."""
    cpus = available_cpus()
    value = count(value, name, low=1, error=error)
    if value > cpus:
        raise error(f"{name}: {value} threads asked for, but this process may run on {cpus} CPU(s)")
    return value


def thread_counts(value: Any, name: str = "threads", error: type[UserError] = UserError) -> tuple[int, ...]:
    """A non-empty list of thread counts (each `threads`), as a sorted tuple without repeats."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise error(f"{name}: expected a non-empty list of thread counts, got {value!r:.60}")
    return tuple(sorted({threads(t, name, error) for t in value}))


def seconds(value: Any, name: str, *, allow_zero: bool = False, high: float = MAX_SECONDS,
            error: type[UserError] = UserError) -> float:
    """A duration: finite, > 0 (or >= 0 with `allow_zero`), at most `high` seconds."""
    return number(value, name, low=0.0, low_open=not allow_zero, high=high, error=error)


def choice(value: Any, name: str, options: Iterable[str], error: type[UserError] = UserError) -> str:
    options = list(options)
    if value not in options:
        raise error(f"{name}: expected one of {', '.join(map(str, options))}, got {_show(value)}")
    return value


def device(value: Any, name: str = "device", error: type[UserError] = UserError) -> str:
    """`cpu`, or `cuda` / `cuda:N` where such a device exists here."""
    text = str(value)
    if text == "cpu":
        return text
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(text[5:]) if ":" in text else 0
        if index >= n:
            raise error(f"{name}: '{text}' asked for, but this machine has {n} CUDA device(s)")
        return text
    raise error(f"{name}: expected cpu, cuda or cuda:N, got {_show(value)}")


def field(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], source: str, *,
          required: bool = True, error: type[UserError] = UserError) -> Any:
    """`doc[key]` of a JSON document, checked for type (`int` refuses bools; `float` takes ints and refuses
    NaN and infinities); a missing optional field gives None."""
    if key not in doc:
        if required:
            raise error(f"{source}: field '{key}' is missing")
        return None
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, (int, float)) and not isinstance(value, bool):
        return number(value, f"{source}: field '{key}'", error=error)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join({"str": "a string", "int": "an integer", "float": "a number", "list": "a list",
                             "dict": "an object", "bool": "true or false"}.get(k.__name__, k.__name__) for k in kinds)
        raise error(f"{source}: field '{key}': expected {names}, got {_show(value)}")
    return value
