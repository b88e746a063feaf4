"""How numbers look wherever flashbench shows them: terminal tables, Markdown, HTML, plot axes."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["binary_size", "is_missing", "milliseconds", "number", "shape_value", "slowdown",
           "speedup", "tokens"]


def is_missing(value: Any) -> bool:
    """None or NaN (pandas turns a missing number into NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: Any, digits: int = 3, missing: str = "") -> str:
    """Significant digits below 1000, whole and grouped from 1000: 0.0123, 45.3, 612, 2,579.

    Integers as they are below 1000 too (4096 reads 4,096); text passes through."""
    if is_missing(value):
        return missing
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)  # a name, a status: as it is
    value = float(value)
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"


def milliseconds(value: Any, missing: str = "") -> str:
    """Four significant digits, trailing zeros kept, so a column reads alike: 0.09398, 1.000,
    12.30, 184.0; whole and grouped from 1000 ms."""
    if is_missing(value):
        return missing
    value = float(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:#.4g}".rstrip(".")


def binary_size(n: Any, *, compact: bool = False, digits: int = 1, missing: str = "") -> str:
    """Bytes in binary units: 16.5 MiB (or, ``compact``, 16.5M for a narrow column)."""
    if is_missing(n):
        return missing
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            text = f"{n / size:.{digits}f}" if digits >= 0 else f"{n / size:g}"
            return f"{text}{unit[0]}" if compact else f"{text} {unit}"
    return f"{int(n)}B" if compact else f"{int(n)} B"


def speedup(x: Any) -> str:
    """Two decimals, or two significant digits below 0.1 (a 900× slower backend is not 0.00)."""
    if is_missing(x):
        return ""
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def slowdown(x: Any) -> str:
    """A fraction as a percentage with one decimal (0.031 reads 3.1%); infinite as ∞."""
    if is_missing(x):
        return ""
    return "∞" if math.isinf(x) else f"{x:.1%}"


def tokens(n: float) -> str:
    """Token counts as sweeps choose them: 512, 1k, 8k, 1.5k (binary thousands)."""
    if n >= 1024 and n % 256 == 0:
        return f"{n / 1024:g}k"
    return f"{n:g}"


def shape_value(field: str, value: Any) -> str:
    """A shape field's value as tables show it: causal as causal/full, a mask or layout field
    that is not set as "-", the rest as they are."""
    if field == "causal":
        return "causal" if value else "full"
    if is_missing(value):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a softcap of 50.0; a window read back through pandas
    return str(value)
