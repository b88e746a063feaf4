"""PyTorch scaled_dot_product_attention: its own dispatch, or one backend forced."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

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


def _mask_args(q: torch.Tensor, k: torch.Tensor, causal: bool) -> dict:
    """SDPA's is_causal aligns the diagonal to the start; ours aligns it to the end."""
    seq_len, kv_len = q.shape[-2], k.shape[-2]
    if not causal:
        return {}
    if seq_len == kv_len:
        return {"is_causal": True}
    return {"attn_mask": causal_lower_right(seq_len, kv_len)}


def prepare(variant: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
            scale: float) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running SDPA under ``variant``'s backend choice."""
    forced = VARIANTS[variant]
    kwargs = _mask_args(q, k, causal) | {"scale": scale, "enable_gqa": k.shape[1] != q.shape[1]}
    if forced is None:
        return lambda: F.scaled_dot_product_attention(q, k, v, **kwargs)

    def run() -> torch.Tensor:
        with sdpa_kernel([forced]):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)

    return run


def resolve(variant: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
            causal: bool) -> str:
    """Which backend SDPA's dispatch picks for these inputs under ``variant`` (flashbench's name)."""
    forced = VARIANTS[variant]
    if forced is None:
        return _resolve(q, k, v, causal=causal)
    with sdpa_kernel([forced]):
        return _resolve(q, k, v, causal=causal)


def _resolve(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool) -> str:
    gqa = k.shape[1] != q.shape[1]
    mask = _mask_args(q, k, causal).get("attn_mask")
    if mask is not None:
        # A lower-right causal mask is dispatched in Python (CausalBias._dispatch): flash if it
        # can, then memory-efficient, else SDPA's own choice with the mask materialized.
        params = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, False, gqa)
        if torch.backends.cuda.can_use_flash_attention(params):
            return "sdpa-flash"
        if torch.backends.cuda.can_use_efficient_attention(params):
            return "sdpa-efficient"
        choice = torch.ops.aten._fused_sdp_choice(q, k, v, mask._materialize(q.device), 0.0,
                                                  False, scale=None, enable_gqa=gqa)
    else:
        choice = torch.ops.aten._fused_sdp_choice(q, k, v, None, 0.0, causal, scale=None,
                                                  enable_gqa=gqa)
    return _NAME_OF.get(int(choice), f"sdpa-backend-{int(choice)}")
