"""FLOP counts and modelled device-memory traffic of attention, per case and per algorithm.

Conventions (the ones FlashAttention papers and tritonbench use):

* FLOPs count the two matrix products only: S = Q·Kᵀ and O = P·V, each 2·D multiply-adds per
  attended (query, key) pair, so a forward pass is 4·B·H·D·pairs. Softmax and scaling are not
  counted. ``pairs`` is the exact number of unmasked score entries per head: N·Nk without a
  mask; with the causal diagonal aligned to the end (query i sees key j iff j <= i + Nk - N) it
  is N·(N+1)/2 for N == Nk. GQA counts query heads: sharing K/V saves bytes, not FLOPs.
* A sliding window keeps the pairs with j >= i' - window as well (i' = i + Nk - N), counted
  exactly; a ragged batch counts each sequence's own pairs (its real tokens, never the padding
  a backend may add); a softcap's tanh is not a matrix product and adds no FLOPs.
* Backward is 2.5x the forward (five products: S recomputed, dV, dP, dQ, dK); forward plus
  backward is 3.5x.
* ``hbm_bytes`` is the least device-memory traffic the backend's *algorithm* needs, each tensor
  it reads or writes counted once, in the dtype it uses:

  - ``flash`` (our Triton kernel, SDPA flash / efficient / cuDNN): read Q, K, V; write O and the
    fp32 log-sum-exp. S and P never leave the chip, so traffic grows with N, not N². Of a
    ragged batch the real tokens; with a window the keys it needs (a decode step reads its
    last seq_len + window keys); of a paged cache the whole pages those keys lie in, and the
    block table.
  - ``naive`` (kernels/naive.py, exactly as written there): Q·scale read and written once;
    S = (Q·scale)·Kᵀ written in the input dtype; for causal, a masked_fill pass reads and
    writes S and reads the boolean mask; for 16-bit inputs S is upcast (read 16-bit, write
    fp32); the softmax reads S and writes P in fp32; for 16-bit inputs P is cast back (read
    fp32, write 16-bit); P·V reads P. Plus Q, K, V read and O written.
  - ``math`` (SDPA's math backend): S and P materialized in fp32 (PyTorch upcasts 16-bit inputs
    for this backend), S written then read by the softmax, P written then read by P·V, plus a
    mask pass (read and write S, read an fp32 mask) when causal; Q, K, V read and O written in
    the input dtype. PyTorch's extra elementwise passes over Q, K, V (upcast, scaling) are not
    counted: they are O(N·D), small beside the O(N²) terms.
* Backward (``bwd``): flash algorithms read Q, K, V, O, dO and the LSE and write dQ, dK, dV,
  recomputing S and P on chip; materializing ones add seven fp32 passes over the N×Nk
  matrices (P read for dV and for dS, dP written and read, dS written and read twice).
  ``fwd_bwd`` is the forward's bytes plus the backward's.
"""

from __future__ import annotations

from flashbench.core.cases import DTYPE_BYTES, Case, Mode
from flashbench.core.registry import Algorithm, algorithm_of

__all__ = [
    "BWD_FACTOR",
    "FWD_BWD_FACTOR",
    "attended_pairs",
    "flops",
    "hbm_bytes",
    "materialized_peak_bytes",
]

BWD_FACTOR = 2.5
FWD_BWD_FACTOR = 3.5
LSE_BYTES = 4  # the log-sum-exp is kept in fp32 by every flash implementation


def _clamped_prefix_sum(t: int, cap: int) -> int:
    """sum over integers x <= t of clamp(x, 0, cap)."""
    if t <= 0:
        return 0
    if t <= cap:
        return t * (t + 1) // 2
    return cap * (cap + 1) // 2 + (t - cap) * cap


def attended_pairs(seq_len: int, kv_len: int, causal: bool, window: int | None = None) -> int:
    """Unmasked (query, key) pairs of one head of one sequence.

    Causal, the diagonal aligned to the end: query i sees keys j <= i' = i + kv_len - seq_len;
    a window keeps only j >= i' - window as well (window + 1 keys at most)."""
    if not causal:
        return seq_len * kv_len
    # Row i sees clamp(i' + 1, 0, kv_len) - clamp(i' - window, 0, kv_len) keys: sums of
    # clamped arithmetic runs.
    def run_sum(first: int) -> int:  # sum of clamp(x, 0, kv_len) for x = first .. first+N-1
        return (_clamped_prefix_sum(first + seq_len - 1, kv_len)
                - _clamped_prefix_sum(first - 1, kv_len))

    seen = run_sum(kv_len - seq_len + 1)
    return seen if window is None else seen - run_sum(kv_len - seq_len - window)


def _lengths(case: Case) -> list[tuple[int, int]]:
    """(queries, keys) of each sequence: a ragged batch attends within each sequence."""
    if case.ragged is None:
        return [(case.seq_len, case.kv_len)] * case.batch
    return [(n, n) for n in case.seq_lens]


def flops(case: Case) -> int:
    """Exact matmul FLOPs of the case (see the module docstring for the convention): the
    real tokens of a ragged batch, the unmasked pairs of a window; a softcap's tanh is not a
    matrix product and is not counted."""
    pairs = sum(attended_pairs(n, nk, case.causal, case.window) for n, nk in _lengths(case))
    fwd = 4 * case.heads * case.head_dim * pairs
    factor = {Mode.FWD: 1.0, Mode.BWD: BWD_FACTOR, Mode.FWD_BWD: FWD_BWD_FACTOR}[case.mode]
    return int(fwd * factor)


def keys_read(case: Case) -> int:
    """Keys (per KV head) a fused kernel must read: every key of each sequence, or with a
    window only the last seq_len + window (a decode step reads its window, not the cache);
    with a paged cache whole pages, those the needed keys touch."""
    total = 0
    for n, nk in _lengths(case):
        needed = nk if case.window is None or not case.causal else min(nk, n + case.window)
        if case.page_size is not None:
            first = nk - needed
            needed = ((nk - 1) // case.page_size - first // case.page_size + 1) * case.page_size
        total += needed
    return total


def _io_bytes(case: Case, algorithm: Algorithm) -> int:
    """Q, K, V read once and O written once, in the input dtype: by a fused kernel, the real
    tokens and the keys it needs (plus a paged cache's block table, int32 per page); by a
    materializing one, the padded batch and the whole cache."""
    e = DTYPE_BYTES[case.dtype]
    if algorithm == "flash":
        q_or_o = case.tokens * case.heads * case.head_dim
        k_or_v = keys_read(case) * case.kv_heads * case.head_dim
        table = 4 * case.batch * -(-case.kv_len // case.page_size) if case.page_size else 0
        return e * (2 * q_or_o + 2 * k_or_v) + table
    q_or_o = case.batch * case.heads * case.seq_len * case.head_dim
    k_or_v = case.batch * case.kv_heads * case.kv_len * case.head_dim
    # A paged cache gathered into a contiguous one first: the pages read, the copy written.
    gather = 2 * 2 * k_or_v if case.page_size else 0
    return e * (2 * q_or_o + 2 * k_or_v + gather)


def _masked(case: Case) -> bool:
    """Whether a materializing backend applies a mask pass over S (causal, a window, or the
    padding of a ragged batch)."""
    return case.causal or case.window is not None or case.ragged is not None


def _scores(case: Case) -> int:
    """Elements of the full score matrix S over all heads."""
    return case.batch * case.heads * case.seq_len * case.kv_len


def hbm_bytes(case: Case, algorithm: Algorithm | None = None) -> int:
    """Modelled device-memory bytes of the case's mode (see the module docstring), by the
    traffic model of ``algorithm`` (default: the one the case's backend is declared with)."""
    algorithm = algorithm or algorithm_of(case.backend)
    if case.mode is Mode.FWD:
        return _forward_bytes(case, algorithm)
    backward = _backward_bytes(case, algorithm)
    return backward if case.mode is Mode.BWD else _forward_bytes(case, algorithm) + backward


def _backward_bytes(case: Case, algorithm: Algorithm) -> int:
    e = DTYPE_BYTES[case.dtype]
    tokens = case.tokens if algorithm == "flash" else case.batch * case.seq_len
    q_or_o = tokens * case.heads * case.head_dim
    k_or_v = (tokens if case.ragged else case.batch * case.kv_len) * case.kv_heads * case.head_dim
    # Read Q, K, V, O, dO; write dQ, dK, dV; plus the fp32 LSE read.
    io = e * (3 * q_or_o + 2 * k_or_v) + e * (q_or_o + 2 * k_or_v)
    io += LSE_BYTES * case.tokens * case.heads
    if algorithm == "flash":
        return io
    # Materialized: dV = Pᵀ·dO reads P; dP = dO·Vᵀ is written; dS = P∘(dP − δ) reads P and dP
    # and writes dS; dQ = dS·K and dK = dSᵀ·Q read dS twice: seven fp32 passes over N×Nk.
    return io + 7 * 4 * _scores(case)


def _forward_bytes(case: Case, algorithm: Algorithm) -> int:
    e = DTYPE_BYTES[case.dtype]
    m = _scores(case)
    mask_elems = (case.heads // case.kv_heads) * case.seq_len * case.kv_len
    if algorithm == "flash":
        return _io_bytes(case, algorithm) + LSE_BYTES * case.tokens * case.heads
    if algorithm == "naive":
        q_elems = case.batch * case.heads * case.seq_len * case.head_dim
        traffic = 2 * e * q_elems  # Q·scale, a pass over Q before the product
        traffic += e * m  # S written by (Q·scale)·Kᵀ
        if _masked(case):
            traffic += 2 * e * m + mask_elems  # masked_fill_ reads and writes S, reads the mask
        if e != 4:
            traffic += e * m + 4 * m  # S upcast to fp32
        if case.softcap is not None:
            traffic += 3 * 2 * 4 * m  # c·tanh(S/c): three passes over fp32 S (divide, tanh, scale)
        traffic += 4 * m + 4 * m  # softmax reads S, writes P, both fp32
        if e != 4:
            traffic += 4 * m + e * m  # P cast back to the input dtype
        traffic += e * m  # P·V reads P
        return _io_bytes(case, algorithm) + traffic
    if algorithm == "math":
        traffic = 4 * m + 4 * m + 4 * m + 4 * m  # S written, read; P written, read
        if _masked(case):
            traffic += 2 * 4 * m + 4 * mask_elems  # additive fp32 mask pass over S
        return _io_bytes(case, algorithm) + traffic
    raise ValueError(f"unknown algorithm {algorithm!r}")


def materialized_peak_bytes(case: Case, algorithm: Algorithm | None = None) -> int:
    """Bytes a materializing algorithm holds at once beyond its inputs (0 for flash).

    Used to refuse a case that cannot fit before trying it: both hold S and P in fp32 at once
    during the softmax (naive's 16-bit S copy is freed by then), 8 bytes per score.
    """
    algorithm = algorithm or algorithm_of(case.backend)
    m = _scores(case)
    e = DTYPE_BYTES[case.dtype]
    out = case.batch * case.heads * case.seq_len * case.head_dim * e
    if algorithm not in ("naive", "math"):
        return 0
    if case.mode is Mode.FWD:
        return 2 * 4 * m + out
    # Backward through autograd also keeps the saved P and makes dP and dS: about four fp32
    # N×Nk matrices at once (a bound, to refuse hopeless cases, not a prediction).
    return 4 * 4 * m + 4 * out
