"""The masks and the score cap as explicit tensors, for the backends (and the reference) that materialize them.

One definition of which (query, key) pairs a case attends, shared by the reference, naive and
SDPA's explicit-mask path, so that they cannot disagree with each other or with the FLOP count
(flashbench.core.costs.attended_pairs): with the causal diagonal aligned to the end, query i
sees key j iff j <= i + kv_len - seq_len, and a window keeps j >= i + kv_len - seq_len - window.
"""

from __future__ import annotations

import torch

__all__ = ["apply_softcap", "keep_mask", "padded_keep_mask"]


def keep_mask(seq_len: int, kv_len: int, *, causal: bool, window: int | None,
              device: torch.device) -> torch.Tensor | None:
    """(seq_len, kv_len) booleans, True where a query attends a key; None: every pair."""
    if not causal:
        return None
    shift = kv_len - seq_len
    keep = torch.ones(seq_len, kv_len, dtype=torch.bool, device=device).tril(shift)
    if window is not None:
        keep &= ~torch.ones_like(keep).tril(shift - window - 1)
    return keep


def padded_keep_mask(seq_lens: tuple[int, ...], longest: int, *, causal: bool,
                     window: int | None, device: torch.device) -> torch.Tensor:
    """(B, 1, longest, longest) booleans for a ragged batch padded to its longest sequence:
    each sequence attends within itself. A padding query keeps its first key, so that no row
    is empty (an empty row's softmax is NaN in some backends); its output is dropped."""
    base = keep_mask(longest, longest, causal=causal, window=window, device=device)
    keep = torch.zeros(len(seq_lens), 1, longest, longest, dtype=torch.bool, device=device)
    for b, n in enumerate(seq_lens):
        keep[b, 0, :n, :n] = True if base is None else base[:n, :n]
        keep[b, 0, n:, 0] = True
    return keep


def apply_softcap(s: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """c·tanh(s/c) (Gemma-2's logit cap), or ``s`` as it is. Out of place, in three passes:
    tanh's backward needs its output, which an in-place multiply would overwrite."""
    if softcap is None:
        return s
    return torch.tanh(s / softcap) * softcap
