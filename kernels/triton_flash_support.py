"""What our Triton kernels accept: shapes, dtypes and features, per mode and layout, and why not.

One place answers, before anything runs, whether the ``triton`` backend runs a case
(``unsupported_case``, what the sweep asks) and which kernel a call goes to
(``decode_reason``, which kernels/triton_flash.py's dispatch shares), so the two cannot
disagree. The kernels' own input checks (``check_inputs``) give the same reasons.

The features (flashbench.core.cases.FEATURES) each kernel implements are module constants,
flipped when a kernel grows one: the prefill forward runs ``window``, ``softcap`` and
``ragged``; ``BACKWARD_FEATURES`` are those kernels/triton_flash_bwd.attention_backward takes
(keywords ``window``, ``softcap``, ``cu_seqlens``, ``max_seqlen``); ``DECODE_FEATURES`` those
kernels/triton_decode.decode_forward takes (``window``, ``softcap``, and ``paged`` through
``block_table`` and ``cache_seqlens``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from flashbench.core.cases import Case, Mode

__all__ = ["BACKWARD_FEATURES", "DECODE_FEATURES", "FEATURES", "PREFILL_FEATURES",
           "SUPPORTED_HEAD_DIMS", "Mask", "check_inputs", "decode_reason", "effective_window",
           "feature_words", "longest", "unsupported_case", "unsupported_reason"]

SUPPORTED_HEAD_DIMS: tuple[int, ...] = (32, 64, 96, 128, 256)
_SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# What the prefill forward kernel implements beyond dense attention.
PREFILL_FEATURES: frozenset[str] = frozenset({"window", "softcap", "ragged"})
# What the backward kernels implement (a backward mode of a case with another is unsupported,
# and autograd through ``attention`` refuses it). Spelled out here, not imported, so that
# asking what runs imports no triton; tests/test_triton_support.py holds them equal to
# triton_flash_bwd.FEATURES and triton_decode.FEATURES.
BACKWARD_FEATURES: frozenset[str] = frozenset({"window", "softcap", "ragged"})
# What the decode kernel implements: a decode-shaped case with a feature outside this runs on
# the prefill kernel when that can (a window or a softcap on a dense cache), else (a paged
# cache) is unsupported.
DECODE_FEATURES: frozenset[str] = frozenset({"window", "softcap", "paged"})
# What the ``triton`` backend runs in some mode (flashbench.core.cases.FEATURES).
FEATURES: frozenset[str] = PREFILL_FEATURES | (DECODE_FEATURES & {"paged"})

_WORDS = {"window": "a sliding window", "softcap": "a logit softcap", "ragged": "a ragged batch",
          "paged": "a paged KV cache"}
_ORDER = tuple(_WORDS)


def feature_words(features) -> str:
    """'a sliding window and a logit softcap': the features, in a fixed order, as words."""
    return " and ".join(_WORDS[f] for f in _ORDER if f in features)


class Mask(NamedTuple):
    """What a call attends beyond dense causal-or-full attention: a sliding window, a softcap,
    a ragged batch (q, k, v packed as (tokens, heads, D), ``cu_seqlens`` and ``max_seqlen``)."""

    window: int | None = None
    softcap: float | None = None
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int | None = None

    def keywords(self) -> dict:
        """The keyword arguments to pass on: the features in use only, so that a kernel that
        has not grown them yet still takes a dense call."""
        return {name: value for name, value in self._asdict().items() if value is not None}

    def features(self) -> frozenset[str]:
        return frozenset(name for name, on in (("window", self.window is not None),
                                               ("softcap", self.softcap is not None),
                                               ("ragged", self.cu_seqlens is not None)) if on)


def effective_window(window: int | None, kv_len: int, causal: bool = True) -> int | None:
    """The window, or None where it hides no key: the last query sees keys back to
    kv_len - 1 - window, so a causal window of at least kv_len - 1 is plain causal attention
    (and runs the causal kernel). For a ragged batch, kv_len is its longest sequence."""
    return None if window is not None and causal and window >= kv_len - 1 else window


def longest(cu_seqlens: torch.Tensor) -> int:
    """The longest sequence of a packed batch (a device sync: pass max_seqlen to avoid it)."""
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())


def unsupported_reason(
    *, heads: int, kv_heads: int, seq_len: int, kv_len: int, head_dim: int, dtype: torch.dtype,
    causal: bool, window: int | None = None, softcap: float | None = None,
) -> str | None:
    """Return None when the kernel can run this shape, else a one-line reason why not."""
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return f"head_dim {head_dim} is not one of {SUPPORTED_HEAD_DIMS}"
    if dtype not in _SUPPORTED_DTYPES:
        return f"dtype {dtype} is not float16, bfloat16 or float32"
    if heads < 1 or kv_heads < 1 or seq_len < 1 or kv_len < 1:
        return "heads, kv_heads, seq_len and kv_len must all be at least 1"
    if heads % kv_heads != 0:
        return f"heads ({heads}) is not a multiple of kv_heads ({kv_heads})"
    if causal and seq_len > kv_len:
        return (f"causal with seq_len ({seq_len}) > kv_len ({kv_len}): with the diagonal aligned "
                "to the end the first query rows would see no key")
    if window is not None and (not causal or window < 0):
        return f"a sliding window needs causal and a window of at least 0 (got {window})"
    if softcap is not None and not (math.isfinite(softcap) and softcap > 0):
        return f"softcap must be a positive number (got {softcap})"
    return None


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                 mask: Mask = Mask()) -> None:
    """Raise ValueError unless the prefill kernel takes these tensors: (B, H, N, D) and
    (B, Hkv, Nk, D), or with ``mask.cu_seqlens`` packed (T, H, D) and (T, Hkv, D)."""
    packed = mask.cu_seqlens is not None
    rank = 3 if packed else 4
    if q.dim() != rank or k.dim() != rank or v.dim() != rank:
        raise ValueError("q, k and v must be 3-D: (tokens, heads, head_dim) with cu_seqlens"
                         if packed else "q, k and v must be 4-D: (batch, heads, seq_len, head_dim)")
    if packed:
        (total, heads, head_dim), (kv_total, kv_heads, kv_dim) = q.shape, k.shape
        same = kv_total == total
        seq_len = kv_len = mask.max_seqlen or 0
        cu = mask.cu_seqlens
        if cu.dim() != 1 or cu.numel() < 2 or cu.dtype != torch.int32 or cu.device != q.device:
            raise ValueError("cu_seqlens must be a 1-D int32 tensor of batch + 1 offsets on q's "
                             "device")
    else:
        (batch, heads, seq_len, head_dim), (kv_batch, kv_heads, kv_len, kv_dim) = q.shape, k.shape
        same = kv_batch == batch
    if v.shape != k.shape or not same or kv_dim != head_dim:
        raise ValueError(f"incompatible shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k and v must share dtype and device")
    reason = unsupported_reason(heads=heads, kv_heads=kv_heads, seq_len=seq_len, kv_len=kv_len,
                                head_dim=head_dim, dtype=q.dtype, causal=causal,
                                window=mask.window, softcap=mask.softcap)
    if reason is not None:
        raise ValueError(reason)


def decode_reason(*, heads: int, kv_heads: int, seq_len: int, kv_len: int, head_dim: int,
                  dtype: torch.dtype, causal: bool, features: frozenset[str]) -> str | None:
    """Why the decode kernel does not take this forward (None: it does): not a decode shape,
    a shape it refuses, or a feature it does not implement (yet)."""
    from flashbench.kernels import triton_decode

    if not triton_decode.is_decode_shape(seq_len, kv_len, heads, kv_heads):
        return (f"not a decode shape (at most 16 queries, a cache of at least "
                f"{triton_decode.MIN_DECODE_KV_LEN} keys, at most "
                f"{triton_decode.MAX_STACKED_ROWS} query rows per KV head)")
    missing = features - DECODE_FEATURES
    if missing:
        return f"the decode kernel does not support {feature_words(missing)} yet"
    return triton_decode.unsupported_reason(heads=heads, kv_heads=kv_heads, seq_len=seq_len,
                                            kv_len=kv_len, head_dim=head_dim, dtype=dtype,
                                            causal=causal)


def unsupported_case(case: Case) -> str | None:
    """Why the ``triton`` backend cannot run ``case`` (None: it can), per mode and layout.

    Dense and ragged forwards run on the prefill kernel (a decode shape on the decode kernel
    when it implements the case's features, else on the prefill kernel too); the backward
    modes need the backward kernels to implement the case's features; a paged KV cache is
    read by the decode kernel alone, forward only.
    """
    dtype = _DTYPES[case.dtype]
    reason = unsupported_reason(heads=case.heads, kv_heads=case.kv_heads, seq_len=case.seq_len,
                                kv_len=case.kv_len, head_dim=case.head_dim, dtype=dtype,
                                causal=case.causal, window=case.window, softcap=case.softcap)
    if reason is not None:
        return reason
    window = effective_window(case.window, case.kv_len, case.causal)
    features = frozenset(name for name, value in (
        ("window", window), ("softcap", case.softcap), ("ragged", case.ragged),
        ("paged", case.page_size)) if value is not None)
    if case.mode is not Mode.FWD:
        if "paged" in features:
            return "a paged KV cache has no backward"
        missing = features - BACKWARD_FEATURES
        return f"backward of {feature_words(missing)}: not yet" if missing else None
    if "paged" not in features:
        return None
    reason = decode_reason(heads=case.heads, kv_heads=case.kv_heads, seq_len=case.seq_len,
                           kv_len=case.kv_len, head_dim=case.head_dim, dtype=dtype,
                           causal=case.causal, features=features)
    return None if reason is None else f"a paged KV cache is read by the decode kernel only: {reason}"
