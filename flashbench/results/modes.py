"""How rows were timed (timer, L2 mode, matmul precision), and where two runs' timings differ in it.

Timings taken with another timer (CUDA events or a CUDA graph's replay), with the L2 cache
flushed or hot, or with fp32 matmuls on TF32 or IEEE arithmetic measure different things: a
ratio between them is no regression. The two-run commands (check, compare A B) refuse such
runs unless told otherwise.
"""

from __future__ import annotations

from typing import Any

from flashbench.core.cases import case_key
from flashbench.core.errors import UserError

__all__ = ["TIMING_MODE_FIELDS", "mixed_notes", "pair_differences", "timing_differences"]

TIMING_MODE_FIELDS: tuple[str, ...] = ("timer", "l2", "matmul_precision")


def _timed(row: dict[str, Any]) -> bool:
    return bool(row.get("samples_ms"))


def pair_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, value in a, value in b) where two rows of one case were timed differently.

    A field one row does not record (null: an older flashbench's row) is no difference: what
    is not known cannot be held against the comparison.
    """
    return [(f, a.get(f), b.get(f)) for f in TIMING_MODE_FIELDS
            if a.get(f) is not None and b.get(f) is not None and a.get(f) != b.get(f)]


def timing_differences(base_rows: list[dict[str, Any]],
                       cur_rows: list[dict[str, Any]]) -> list[str]:
    """How the cases timed in both runs differ in how they were timed, one text per
    (field, baseline value, current value), compared case by case (rows matched by case key).

    ``l2: cold vs hot`` when every case timed on both sides differs so; ``l2: cold vs hot in 3
    of 40 cases`` when only some do. Empty when nothing differs.
    """
    base = {case_key(r): r for r in base_rows if _timed(r)}
    pairs = [(base[case_key(r)], r) for r in cur_rows if _timed(r) and case_key(r) in base]
    counts: dict[tuple[str, Any, Any], int] = {}
    for a, b in pairs:
        for difference in pair_differences(a, b):
            counts[difference] = counts.get(difference, 0) + 1
    order = {f: i for i, f in enumerate(TIMING_MODE_FIELDS)}
    texts = []
    for (f, x, y), n in sorted(counts.items(), key=lambda item: (order[item[0][0]], -item[1])):
        where = "" if n == len(pairs) else f" in {n} of {len(pairs)} cases"
        texts.append(f"{f}: {x} vs {y}{where}")
    return texts


def mixed_notes(base_rows: list[dict[str, Any]], cur_rows: list[dict[str, Any]], *,
                allow_mixed: bool) -> list[str]:
    """The timing differences of two runs as notes when ``allow_mixed``; refused otherwise."""
    differences = timing_differences(base_rows, cur_rows)
    if differences and not allow_mixed:
        raise UserError("the two runs were timed differently (" + "; ".join(differences)
                        + "); pass --allow-mixed to compare anyway")
    return [f"timed differently: {d}" for d in differences]
