"""PyTorch scaled_dot_product_attention: its own dispatch, or one backend forced."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import CausalBias, causal_lower_right

from flashbench.measure.inputs import AttentionInputs, dense_kv, packed, padded
from flashbench.measure.masks import keep_mask, padded_keep_mask

__all__ = ["VARIANTS", "prepare", "resolve"]

# flashbench backend name -> the SDPA backend it forces (None: PyTorch chooses).
VARIANTS: dict[str, SDPBackend | None] = {
    "sdpa": None,
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa-math": SDPBackend.MATH,
}
_NAME_OF = {int(b): name for name, b in VARIANTS.items() if b is not None}


def _mask_args(seq_len: int, kv_len: int, causal: bool) -> dict:
    """SDPA's is_causal aligns the diagonal to the start; ours aligns it to the end."""
    if not causal:
        return {}
    if seq_len == kv_len:
        return {"is_causal": True}
    return {"attn_mask": causal_lower_right(seq_len, kv_len)}


def _arguments(inputs: AttentionInputs) -> tuple[Callable[[], tuple], dict, Callable]:
    """What SDPA is called with for these inputs: a function making the dense (q, k, v) (a
    paged cache gathered, a ragged batch padded: inside the timed call, since a user of SDPA
    pays for them), the keyword arguments (a window or a ragged batch as an explicit boolean
    mask), and what turns SDPA's output back into the inputs' layout."""
    q, k, v = inputs.tensors
    if inputs.layout == "ragged":
        mask = padded_keep_mask(inputs.seq_lens, inputs.max_seqlen, causal=inputs.causal,
                                window=inputs.window, device=q.device)
        return (lambda: tuple(padded(inputs, t) for t in (q, k, v)),
                {"attn_mask": mask}, lambda out: packed(inputs, out))
    if inputs.layout == "paged":
        dense = lambda: (q, *dense_kv(inputs))  # noqa: E731
        kv_len = inputs.kv_len
    else:
        dense = lambda: (q, k, v)  # noqa: E731
        kv_len = k.shape[2]
    seq_len = q.shape[2]
    if inputs.window is None:
        kwargs = _mask_args(seq_len, kv_len, inputs.causal)
    else:
        kwargs = {"attn_mask": keep_mask(seq_len, kv_len, causal=inputs.causal,
                                         window=inputs.window, device=q.device)}
    return dense, kwargs, lambda out: out


def prepare(variant: str, inputs: AttentionInputs) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running SDPA under ``variant``'s backend choice."""
    forced = VARIANTS[variant]
    dense, mask, back = _arguments(inputs)
    kv_heads = inputs.k.shape[2 if inputs.layout == "paged" else 1]
    kwargs = mask | {"scale": inputs.scale, "enable_gqa": kv_heads != inputs.q.shape[1]}

    def call() -> torch.Tensor:
        return back(F.scaled_dot_product_attention(*dense(), **kwargs))

    if forced is None:
        return call

    def run() -> torch.Tensor:
        with sdpa_kernel([forced]):
            return call()

    return run


def resolve(variant: str, inputs: AttentionInputs) -> str:
    """Which backend SDPA's dispatch picks for these inputs under ``variant`` (flashbench's
    name), and what was done to fit SDPA: ``(padded)`` for a ragged batch, ``(gathered)``
    for a paged cache."""
    forced = VARIANTS[variant]
    dense, mask, _ = _arguments(inputs)
    q, k, v = dense()
    with sdpa_kernel([forced]) if forced is not None else nullcontext():
        name = _resolve(q, k, v, mask.get("attn_mask"), causal=bool(mask.get("is_causal")))
    how = {"ragged": " (padded)", "paged": " (gathered)"}.get(inputs.layout, "")
    return name + how


def _resolve(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, *, causal: bool) -> str:
    gqa = k.shape[1] != q.shape[1]
    if isinstance(mask, CausalBias):
        # A lower-right causal mask is dispatched in Python (CausalBias._dispatch): flash if it
        # can, then memory-efficient, else SDPA's own choice with the mask materialized.
        params = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, False, gqa)
        if torch.backends.cuda.can_use_flash_attention(params):
            return "sdpa-flash"
        if torch.backends.cuda.can_use_efficient_attention(params):
            return "sdpa-efficient"
        mask = mask._materialize(q.device)
    choice = torch.ops.aten._fused_sdp_choice(q, k, v, mask, 0.0, causal, scale=None,
                                              enable_gqa=gqa)
    return _NAME_OF.get(int(choice), f"sdpa-backend-{int(choice)}")
