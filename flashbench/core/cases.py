"""The identity of a measurement (a case) and the vocabularies of modes, dtypes and statuses."""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from enum import StrEnum

__all__ = [
    "CASE_FIELDS",
    "DTYPE_BYTES",
    "DTYPES",
    "FAILED",
    "Case",
    "Mode",
    "RunStatus",
    "SHAPE_FIELDS",
    "Status",
    "case_key",
    "is_decode_step",
]


class Mode(StrEnum):
    FWD = "fwd"
    BWD = "bwd"
    FWD_BWD = "fwd_bwd"


class Status(StrEnum):
    OK = "ok"
    UNSUPPORTED = "unsupported"
    OOM = "oom"
    ERROR = "error"
    TIMEOUT = "timeout"
    CRASH = "crash"
    MISMATCH = "mismatch"


# The statuses of a case that ran and failed (--strict exits 1 on these); ``unsupported`` and
# ``oom`` are answers about the case, not failures of the tool.
FAILED: frozenset[Status] = frozenset({Status.ERROR, Status.MISMATCH, Status.CRASH,
                                       Status.TIMEOUT})


class RunStatus(StrEnum):
    """A run's status in its meta.json."""

    RUNNING = "running"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    PARTIAL = "partial"  # a merge of some of the shards


# Short names users type, and the bytes per element the cost model needs.
DTYPE_BYTES: dict[str, int] = {"fp16": 2, "bf16": 2, "fp32": 4}
DTYPES: tuple[str, ...] = tuple(DTYPE_BYTES)


@dataclass(frozen=True, slots=True)
class Case:
    """One backend on one attention shape: the key of a result row."""

    backend: str
    mode: Mode
    batch: int
    heads: int
    kv_heads: int
    seq_len: int
    kv_len: int
    head_dim: int
    dtype: str
    causal: bool

    @property
    def shape_key(self) -> tuple:
        """Everything but the backend: cases with the same key are compared side by side."""
        return (self.mode, self.batch, self.heads, self.kv_heads, self.seq_len, self.kv_len,
                self.head_dim, self.dtype, self.causal)

    @property
    def seed(self) -> int:
        """A stable per-case seed, so inputs are fresh per case yet reproducible."""
        return zlib.crc32(repr(self.to_dict()).encode())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mode"] = str(self.mode)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Case:
        return cls(**{k: d[k] for k in CASE_FIELDS} | {"mode": Mode(d["mode"])})

    def label(self) -> str:
        """A compact human-readable description, used in progress bars and messages."""
        gqa = f"/{self.kv_heads}" if self.kv_heads != self.heads else ""
        kv = f"→{self.kv_len}" if self.kv_len != self.seq_len else ""
        mask = " causal" if self.causal else ""
        return (f"{self.backend} {self.mode} B{self.batch} H{self.heads}{gqa} "
                f"N{self.seq_len}{kv} D{self.head_dim} {self.dtype}{mask}")


CASE_FIELDS: tuple[str, ...] = (
    "backend", "mode", "batch", "heads", "kv_heads", "seq_len", "kv_len", "head_dim", "dtype",
    "causal",
)
# Everything but the backend: cases with the same shape are compared side by side.
SHAPE_FIELDS: tuple[str, ...] = CASE_FIELDS[1:]


def case_key(case: dict) -> tuple:
    """The identity of a row or a case dict: its case fields, in order."""
    return tuple(case[f] for f in CASE_FIELDS)


def is_decode_step(seq_len, kv_len):
    """A few new query tokens (at most 16) against a longer KV cache: the inference decode step.

    Works on numbers and on pandas columns alike."""
    return (seq_len < kv_len) & (seq_len <= 16)
