"""Option validators shared by every floor (ops, cells, layers, models, tasks, training).

Each returns the checked value (converted where said) or raises one clear
ValueError / TypeError naming the option, what it received and what it accepts.

    d_state = positive_int("d_state", d_state)
    rate = real("dropout", dropout, lo=0, hi=1, hi_open=True)
    coupled = flag("coupled", coupled)
    kind = choice("decay", decay, ("none", "scalar", "vector"))
"""

from __future__ import annotations

import math
import numbers


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name: str, value, *, allow_none: bool = False) -> int | None:
    """An int >= 1 (or None when `allow_none`)."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return int(value)


def int_in(name: str, value, lo: int = 1, hi: int | None = None) -> int:
    """An int in [lo, hi] (hi None: no upper bound)."""
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an int {rng}, got {value!r}")
    return int(value)


def real(name: str, value, lo: float | None = None, hi: float | None = None, *,
         lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite real number within the bounds (closed unless `lo_open` / `hi_open`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ValueError(f"{name} must lie in {left}{lo_s}, {hi_s}{right}, got {value!r}")
    return float(value)


def positive(name: str, value, *, allow_zero: bool = False) -> float:
    """A finite real > 0 (>= 0 with `allow_zero`)."""
    return real(name, value, lo=0.0, lo_open=not allow_zero)


def flag(name: str, value) -> bool:
    """A bool (not an int standing for one)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def choice(name: str, value, options):
    """One of `options` (compared with ==)."""
    if value not in tuple(options):
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def divides(name: str, value: int, of_name: str, of: int) -> int:
    """A positive int that divides `of`."""
    positive_int(name, value)
    if of % value:
        raise ValueError(f"{name} ({value}) must divide {of_name} ({of})")
    return value
