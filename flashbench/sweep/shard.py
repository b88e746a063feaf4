"""``--shard I/N``: the I-th of N deterministic, balanced parts of a sweep's cases, for job arrays.

Shards count from 1 (``1/4`` … ``4/4``), as SLURM's ``--array=1-N`` does. The split depends on
the case grid and the timing settings alone (flashbench.sweep.schedule's duration estimate, in whole
microseconds, on a nominal GPU), never on the machine, so N copies of one command on N machines
measure every case exactly once between them. Whole comparison groups go to one shard. With
more shards than groups some shards are empty: such a shard is a valid, empty run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from flashbench.core.cases import Case
from flashbench.core.config import TimingPolicy
from flashbench.core.errors import UserError
from flashbench.sweep.schedule import comparison_groups, partition

__all__ = ["MAX_SHARDS", "Shard", "parse_shard", "shard_cases"]

MAX_SHARDS = 100_000  # beyond this, a typo rather than a job array


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def to_meta(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}

    @classmethod
    def from_meta(cls, data: dict[str, Any]) -> Shard:
        return parse_shard(f"{data['index']}/{data['count']}")


def parse_shard(text: str) -> Shard:
    """'2/4' -> Shard(2, 4); anything else is bad input naming what is allowed."""
    match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", str(text))
    if not match:
        raise UserError(f"--shard: {text!r} is not I/N (the I-th of N shards, counted from 1, "
                        f"e.g. 1/4)")
    index, count = int(match[1]), int(match[2])
    if not 1 <= count <= MAX_SHARDS:
        raise UserError(f"--shard {text}: the number of shards must be between 1 and "
                        f"{MAX_SHARDS}, got {count}")
    if not 1 <= index <= count:
        raise UserError(f"--shard {text}: the shard must be between 1 and {count} "
                        f"(shards count from 1), got {index}")
    return Shard(index, count)


def shard_cases(cases: Sequence[Case], shard: Shard, timing: TimingPolicy) -> list[Case]:
    """The cases of ``shard``, in the order they have in ``cases``."""
    parts = partition(comparison_groups(cases), shard.count, timing)
    mine = {c for group in parts[shard.index - 1] for c in group}
    return [c for c in cases if c in mine]
