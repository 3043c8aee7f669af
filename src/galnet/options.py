"""Option validation shared by every ``galnet`` command.

Each function here is an ``argparse`` ``type=`` converter (or a check run before any computation) that
turns a bad value into a one-line error naming the option and the value, so that no command starts
work with an option it cannot honour. argparse reports a converter's :class:`argparse.ArgumentTypeError`
as ``galnet CMD: error: argument --batch-size: must be a positive integer, got '-8'`` and exits with
status 2. Checks that run later raise :class:`galnet.errors.ConfigError` (also exit status 2 through
:func:`galnet.cli.main`).

This module is at the bottom of the stage order (it imports only :mod:`galnet.errors`), so every stage's
``command.py`` can use it.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "usable_cores",
    "positive_int",
    "nonnegative_int",
    "positive_float",
    "nonnegative_float",
    "finite_float",
    "int_in_range",
    "float_in_range",
    "float_list",
    "check_output_path",
    "check_field_type",
]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it, else the CPU count): the default
    of the worker-process options."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {name}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer > 0 (batch sizes, counts, chunk sizes)."""
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (iteration counts where 0 means none, seeds)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (noise sigma, gain, pixel scale)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (sky level, read noise)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (zero points, offsets)."""
    return _number(text, float)


def int_in_range(lo: int, hi: int) -> Callable[[str], int]:
    """A converter for an integer in ``[lo, hi]`` (e.g. stamp sizes)."""

    def convert(text: str) -> int:
        value = _number(text, int)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got {text!r}")
        return value

    convert.__name__ = f"integer in [{lo}, {hi}]"
    return convert


def float_in_range(lo: float, hi: float) -> Callable[[str], float]:
    """A converter for a finite number in ``[lo, hi]``."""

    def convert(text: str) -> float:
        value = _number(text, float)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be a number in [{lo:g}, {hi:g}], got {text!r}")
        return value

    convert.__name__ = f"number in [{lo:g}, {hi:g}]"
    return convert


def float_list(
    text: str, *, option: str, length: int | None = None, lo: float = -math.inf, hi: float = math.inf
) -> list[float]:
    """Parse a comma-separated list of finite numbers, e.g. ``--n-grid 1,2.5,4``.

    Parameters
    ----------
    text : str
        The option's value; empty means an empty list (when ``length`` is None).
    option : str
        The option's name, for the error message.
    length : int, optional
        Required number of values.
    lo, hi : float
        Inclusive range of each value.

    Raises
    ------
    ConfigError
        Naming the option and the offending value.
    """
    parts = [p.strip() for p in str(text).split(",")] if str(text).strip() else []
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"{option}: {part!r} is not a number (in {text!r})") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ConfigError(f"{option}: {part!r} must be a finite number in [{lo:g}, {hi:g}] (in {text!r})")
        values.append(value)
    if length is not None and len(values) != length:
        raise ConfigError(f"{option} needs {length} comma-separated numbers, got {text!r}")
    return values


def check_output_path(path: str | os.PathLike, *, option: str = "--output", directory: bool = False) -> Path:
    """Check, before any computation, that an output can be written at ``path``.

    A file output must not be an existing directory, and its parent must be (or can be made) a
    writable directory; a directory output must not be an existing file. Nothing is created.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    ConfigError
        One line naming the option and the path.
    """
    p = Path(path)
    if directory:
        if p.exists() and not p.is_dir():
            raise ConfigError(f"{option} {str(p)!r} is a file, not a directory")
    elif p.is_dir():
        raise ConfigError(f"{option} {str(p)!r} is a directory; give a file name")
    # the nearest existing ancestor must be a writable directory
    anc = (p if directory else p.parent).absolute()
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{option} {str(p)!r}: {str(anc)!r} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {str(p)!r}: directory {str(anc)!r} is not writable")
    if p.exists() and not directory and not os.access(p, os.W_OK):
        raise ConfigError(f"{option} {str(p)!r} exists and is not writable")
    return p


# ---------------------------------------------------------------- config files (simulate, train)
_SCALARS: dict[str, tuple[type, ...]] = {
    "float": (int, float), "int": (int,), "str": (str,), "bool": (bool,), "None": (type(None),),
}


def check_field_type(value: Any, annotation: str, key: str) -> None:
    """Check a config-file value against its dataclass field's type annotation.

    Parameters
    ----------
    value : object
        The value read from a TOML / JSON file.
    annotation : str
        The field's annotation as text, e.g. ``"float | None"``, ``"list[int]"``,
        ``"dict[str, float]"``, ``"int | str | None"``; names other than ``float``, ``int``,
        ``str``, ``bool``, ``None``, ``list`` and ``dict`` accept anything.
    key : str
        The dotted key, for the message (e.g. ``"priors.mag.low"``).

    Raises
    ------
    ConfigError
        ``"<key>: expected <annotation>, got <type> <value>"``. A ``bool`` is not a number, and
        numbers must be finite.
    """
    for alt in (a.strip() for a in annotation.split("|")):
        base = alt.split("[", 1)[0].strip()
        inner = alt[alt.index("[") + 1 : -1] if "[" in alt and alt.endswith("]") else "Any"
        if base == "list":
            ok = isinstance(value, list) and all(_fits(v, inner) for v in value)
        elif base == "dict":
            vtype = inner.rsplit(",", 1)[-1].strip()
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and _fits(v, vtype) for k, v in value.items()
            )
        else:
            ok = _fits(value, base)
        if ok:
            return
    raise ConfigError(f"{key}: expected {annotation}, got {type(value).__name__} {value!r}")


def _fits(value: Any, name: str) -> bool:
    kinds = _SCALARS.get(name)
    if kinds is None:
        return True
    if isinstance(value, bool) and name != "bool":
        return False
    if not isinstance(value, kinds):
        return False
    return not (isinstance(value, float) and not math.isfinite(value))
