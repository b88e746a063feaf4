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
    "FEATURES",
    "NEWER_CASE_FIELDS",
    "Case",
    "Mode",
    "RunStatus",
    "SHAPE_FIELDS",
    "Status",
    "case_features",
    "case_key",
    "missing_features",
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
    # The attention people deploy (None: the dense, padded case). ``window``: a sliding window,
    # the keys within ``window`` tokens left of the causal diagonal (window + 1 keys at most,
    # the diagonal's own included); ``softcap``: scores capped as c·tanh(s/c) before the
    # softmax; ``ragged``: sequences of different lengths packed without padding
    # (flashbench.core.ragged: batch sequences, seq_len and kv_len the longest); ``page_size``:
    # the KV cache in pages of this many tokens, addressed through a block table.
    window: int | None = None
    softcap: float | None = None
    ragged: str | None = None
    page_size: int | None = None

    @property
    def shape_key(self) -> tuple:
        """Everything but the backend: cases with the same key are compared side by side."""
        return tuple(getattr(self, f) for f in SHAPE_FIELDS)

    @property
    def seq_lens(self) -> tuple[int, ...]:
        """Each sequence's length: the ragged batch's, or ``batch`` times seq_len."""
        if self.ragged is None:
            return (self.seq_len,) * self.batch
        from flashbench.core.ragged import lengths

        return lengths(self.ragged, self.batch)

    @property
    def tokens(self) -> int:
        """Query tokens the case computes (a ragged batch's real tokens, no padding)."""
        return sum(self.seq_lens)

    @property
    def seed(self) -> int:
        """A stable per-case seed, so inputs are fresh per case yet reproducible (a dense case
        keeps the seed it had before the newer fields existed)."""
        d = {k: v for k, v in self.to_dict().items()
             if not (k in NEWER_CASE_FIELDS and v is None)}
        return zlib.crc32(repr(d).encode())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mode"] = str(self.mode)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Case:
        # Rows written before the newer fields existed read as the dense case.
        return cls(**{k: d.get(k) for k in CASE_FIELDS} | {"mode": Mode(d["mode"])})

    def label(self) -> str:
        """A compact human-readable description, used in progress bars and messages."""
        gqa = f"/{self.kv_heads}" if self.kv_heads != self.heads else ""
        kv = f"→{self.kv_len}" if self.kv_len != self.seq_len else ""
        mask = " causal" if self.causal else ""
        mask += f" window{self.window}" if self.window is not None else ""
        mask += f" softcap{self.softcap:g}" if self.softcap is not None else ""
        mask += f" page{self.page_size}" if self.page_size is not None else ""
        batch = f"B{self.batch}" if self.ragged is None else f"{self.ragged}×{self.batch}"
        return (f"{self.backend} {self.mode} {batch} H{self.heads}{gqa} "
                f"N{self.seq_len}{kv} D{self.head_dim} {self.dtype}{mask}")


CASE_FIELDS: tuple[str, ...] = (
    "backend", "mode", "batch", "heads", "kv_heads", "seq_len", "kv_len", "head_dim", "dtype",
    "causal", "window", "softcap", "ragged", "page_size",
)
# The fields rows written before them lack: read as None (the dense case).
NEWER_CASE_FIELDS: tuple[str, ...] = ("window", "softcap", "ragged", "page_size")
# Everything but the backend: cases with the same shape are compared side by side.
SHAPE_FIELDS: tuple[str, ...] = CASE_FIELDS[1:]


# What a case may ask of a backend beyond dense attention: a backend (or a plugin) declares
# the ones it implements, and is not given a case that needs another.
FEATURES: tuple[str, ...] = ("window", "softcap", "ragged", "paged")


def case_features(case: Case) -> frozenset[str]:
    """The features ``case`` needs: its window, softcap, ragged batch and paged cache."""
    return frozenset(name for name, value in zip(FEATURES, (case.window, case.softcap,
                                                            case.ragged, case.page_size))
                     if value is not None)


def missing_features(case: Case, declared: frozenset[str] | tuple[str, ...], who: str
                     ) -> str | None:
    """Why ``who`` cannot run ``case``: the features it needs that were not declared."""
    missing = [f for f in FEATURES if f in case_features(case) and f not in declared]
    if not missing:
        return None
    return f"{who} does not support {', '.join(_FEATURE_WORDS[f] for f in missing)}"


_FEATURE_WORDS = {"window": "a sliding window", "softcap": "a logit softcap",
                  "ragged": "ragged batches", "paged": "a paged KV cache"}


def case_key(case: dict) -> tuple:
    """The identity of a row or a case dict: its case fields, in order."""
    return tuple(case.get(f) for f in CASE_FIELDS)


def is_decode_step(seq_len, kv_len):
    """A few new query tokens (at most 16) against a longer KV cache: the inference decode step.

    Works on numbers and on pandas columns alike."""
    return (seq_len < kv_len) & (seq_len <= 16)
