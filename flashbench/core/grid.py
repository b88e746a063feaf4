"""A sweep's cases: the grids of a config expanded, each combination that means something once."""

from __future__ import annotations

import itertools
from typing import Iterator

from flashbench.core import ragged
from flashbench.core.cases import Case, Mode
from flashbench.core.config import SweepConfig

__all__ = ["expand_cases"]


def expand_cases(cfg: SweepConfig) -> list[Case]:
    """Every case of the sweep: the union of its grids' cases, in order, each once."""
    return list(dict.fromkeys(c for grid in cfg.grids for c in _grid_cases(grid)))


def _grid_cases(cfg: SweepConfig) -> list[Case]:
    """The cartesian grid, backends innermost so that one shape's backends run back to back.

    Combinations that mean nothing are left out, not refused: a window without the causal
    mask, a paged cache in a backward mode, a ragged batch with a paged cache (validate_config
    refuses a config where that leaves a value unused)."""
    cases: list[Case] = []
    for mode, dtype, causal, window, softcap, page_size, head_dim in itertools.product(
            cfg.mode, cfg.dtype, cfg.causal, cfg.window, cfg.softcap, cfg.page_size,
            cfg.head_dim):
        if (window is not None and not causal) or (page_size is not None and mode != Mode.FWD):
            continue
        for spec in cfg.seq_lens:
            if spec is not None and page_size is not None:
                continue
            for batch, heads, kv_heads, seq_len, kv_len in _shapes(cfg, spec):
                for backend in cfg.backends:
                    cases.append(Case(
                        backend=backend, mode=Mode(mode), batch=batch, heads=heads,
                        kv_heads=heads if kv_heads is None else kv_heads,
                        seq_len=seq_len, kv_len=kv_len, head_dim=head_dim, dtype=dtype,
                        causal=causal, window=window, softcap=softcap, ragged=spec,
                        page_size=page_size))
    return list(dict.fromkeys(cases))


def _shapes(cfg: SweepConfig, spec: str | None) -> Iterator[tuple[int, int, int | None, int, int]]:
    """(batch, heads, kv_heads, seq_len, kv_len) of the grid; for a ragged spec its batch
    sizes, each padded length the longest sequence (queries and keys are the same tokens)."""
    if spec is None:
        for batch, heads, kv_heads, seq_len, kv_len in itertools.product(
                cfg.batch, cfg.heads, cfg.kv_heads, cfg.seq_len, cfg.kv_len):
            yield batch, heads, kv_heads, seq_len, seq_len if kv_len is None else kv_len
        return
    for lens, heads, kv_heads in itertools.product(ragged.expand(spec, cfg.batch), cfg.heads,
                                                   cfg.kv_heads):
        yield len(lens), heads, kv_heads, max(lens), max(lens)
