"""FlashAttention-2 style attention forward in Triton: TMA tiles, online softmax, GQA, causal,
sliding window, softcap, ragged (varlen) batches, LSE; and the ``triton`` backend's dispatch
between it, the decode kernel and the backward.

The tile code is kernels/triton_flash_tiles.py, the launch configurations
kernels/triton_flash_configs.py, what runs and why not kernels/triton_flash_support.py.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from flashbench.kernels import triton_flash_support as support
from flashbench.kernels.triton_flash_configs import (FP32_PRECISIONS, LaunchConfig,
                                                     candidate_configs, dot_precision,
                                                     tuning_key)
from flashbench.kernels.triton_flash_configs import default_config as _launch_config
from flashbench.kernels.triton_flash_support import (FEATURES, SUPPORTED_HEAD_DIMS, Mask,
                                                     effective_window, feature_words, longest,
                                                     unsupported_case, unsupported_reason)
from flashbench.kernels.triton_flash_support import check_inputs as _check_inputs
from flashbench.kernels.triton_flash_tiles import LOG2E as _LOG2E
from flashbench.kernels.triton_flash_tiles import attend_rows, kv_bounds, load_tile
from flashbench.measure.inputs import AttentionInputs

__all__ = ["FEATURES", "FP32_PRECISIONS", "SUPPORTED_HEAD_DIMS", "LaunchConfig", "Mask",
           "attention", "attention_forward", "candidate_configs", "dot_precision",
           "kernel_name", "prepare", "tuned_config", "unsupported_case", "unsupported_reason"]

# What runs is said in kernels/triton_flash_support.py: FEATURES (this backend's, any mode),
# BACKWARD_FEATURES (what the backward kernels implement), DECODE_FEATURES (the decode kernel).
# The names the decode and backward kernels import the shared tile code by.
_load_tile, _attend_rows = load_tile, attend_rows


@triton.jit
def _attn_fwd_kernel(
    desc_q, desc_k, desc_v, desc_o, Lse,
    num_heads, group, seq_len, kv_len, qk_scale, window, cap_in, cap_out,
    q_shape, kv_shape, q_strides, k_strides, v_strides, o_strides,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, INTERPRET: tl.constexpr, DOT_PRECISION: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, WARP_SPECIALIZE: tl.constexpr = False,
):
    # Under a causal mask the last query blocks see the most keys; launching them first shortens
    # the tail of the grid.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    kv_head = head // group  # GQA: the query heads of a group share one K/V head, no copies
    if WARP_SPECIALIZE:
        # Triton specializes warps only around descriptors made in the kernel: the desc_*
        # arguments are then the tensors, with their (B, H, N, D) shapes and strides.
        desc_q = tl.make_tensor_descriptor(desc_q, q_shape, q_strides, [1, 1, BLOCK_M, BLOCK_D])
        desc_k = tl.make_tensor_descriptor(desc_k, kv_shape, k_strides, [1, 1, BLOCK_N, BLOCK_D])
        desc_v = tl.make_tensor_descriptor(desc_v, kv_shape, v_strides, [1, 1, BLOCK_N, BLOCK_D])

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = load_tile(desc_q, batch, head, start_m, BLOCK_M, BLOCK_D, INTERPRET)
    lo, unmasked_lo, unmasked_hi, hi = kv_bounds(start_m, seq_len, kv_len, window, BLOCK_M,
                                                 BLOCK_N, CAUSAL, WINDOW)
    out, lse = attend_rows(q, desc_k, desc_v, batch, kv_head, lo, unmasked_hi, hi, offs_m,
                           kv_len, kv_len - seq_len, qk_scale, CAUSAL, INTERPRET, BLOCK_M,
                           BLOCK_N, BLOCK_D, DOT_PRECISION, unmasked_lo=unmasked_lo,
                           window=window, cap_in=cap_in, cap_out=cap_out, WINDOW=WINDOW,
                           SOFTCAP=SOFTCAP, WARP_SPECIALIZE=WARP_SPECIALIZE)
    if WARP_SPECIALIZE:
        # A masked pointer store: the specialization pass cannot split the reshape a 4-D
        # descriptor store needs between its two consumer warpgroups.
        offs_d = tl.arange(0, BLOCK_D)
        ptrs = (desc_o + batch.to(tl.int64) * o_strides[0] + head.to(tl.int64) * o_strides[1]
                + offs_m.to(tl.int64)[:, None] * o_strides[2] + offs_d[None, :])
        tl.store(ptrs, out.to(desc_o.dtype.element_ty),
                 mask=(offs_m < seq_len)[:, None] & (offs_d < q_shape[3])[None, :])
    else:
        # The descriptor clips the store to this head's rows and the real head dim.
        desc_o.store([batch, head, start_m, 0],
                     out.to(desc_o.dtype).reshape(1, 1, BLOCK_M, BLOCK_D))
    tl.store(Lse + pid_bh.to(tl.int64) * seq_len + offs_m, lse, mask=offs_m < seq_len)


@triton.jit
def _attn_fwd_varlen_kernel(
    desc_q, desc_k, desc_v, Out, Lse, Cu_seqlens,
    stride_ot, stride_oh, num_heads, group, total, head_dim, qk_scale, window, cap_in, cap_out,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, INTERPRET: tl.constexpr, DOT_PRECISION: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
):
    # A packed batch: q (total, heads, D) seen through a (1, heads, total, D) descriptor, one
    # program per query block of the longest sequence and (sequence, head). A sequence attends
    # within itself, so seq_len = kv_len and the diagonal is the main one.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    kv_head = head // group
    seq_start = tl.load(Cu_seqlens + batch)
    seq_len = tl.load(Cu_seqlens + batch + 1) - seq_start
    start_m = pid_m * BLOCK_M
    if start_m >= seq_len:  # a block past this sequence's end (it is shorter than the longest)
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    # Rows past the sequence's end are the next sequence's queries: computed, never stored.
    q = load_tile(desc_q, 0, head, seq_start + start_m, BLOCK_M, BLOCK_D, INTERPRET)
    lo, unmasked_lo, unmasked_hi, hi = kv_bounds(start_m, seq_len, seq_len, window, BLOCK_M,
                                                 BLOCK_N, CAUSAL, WINDOW)
    # Keys past the end (the next sequence's, or the descriptor's zero fill) are masked by
    # kv_len = seq_len in the last, masked tile.
    out, lse = attend_rows(q, desc_k, desc_v, 0, kv_head, lo, unmasked_hi, hi, offs_m, seq_len,
                           0, qk_scale, CAUSAL, INTERPRET, BLOCK_M, BLOCK_N, BLOCK_D,
                           DOT_PRECISION, unmasked_lo=unmasked_lo, kv_start=seq_start,
                           window=window, cap_in=cap_in, cap_out=cap_out, WINDOW=WINDOW,
                           SOFTCAP=SOFTCAP)
    # A masked pointer store: a tile-sized descriptor store would overwrite the next
    # sequence's first rows.
    rows = seq_start + offs_m
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = (Out + rows.to(tl.int64)[:, None] * stride_ot + head * stride_oh + offs_d[None, :])
    inside = offs_m < seq_len
    tl.store(ptrs, out.to(Out.dtype.element_ty),
             mask=inside[:, None] & (offs_d[None, :] < head_dim))
    tl.store(Lse + head.to(tl.int64) * total + rows, lse, mask=inside)


def tuned_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                 scale: float, fp32_precision: str = "tf32", window: int | None = None,
                 softcap: float | None = None, cu_seqlens: torch.Tensor | None = None,
                 max_seqlen: int | None = None) -> tuple[LaunchConfig, float]:
    """The fastest candidate for this shape class on this GPU, and the seconds spent tuning.

    Tuned once per ``tuning_key`` (GPU, triton version, head dim, dtype, causal, length
    buckets, for fp32 the matmul precision, and the window, softcap and packing) and cached on
    disk (flashbench.measure.tuning); the interpreter has one fixed configuration.
    """
    from flashbench.measure import tuning

    head_dim = q.shape[-1]
    if os.environ.get("TRITON_INTERPRET") == "1" or not q.is_cuda:
        return _launch_config(head_dim, q.dtype, True), 0.0
    varlen = cu_seqlens is not None
    if varlen and max_seqlen is None:
        max_seqlen = longest(cu_seqlens)
    seq_len, kv_len = (max_seqlen, max_seqlen) if varlen else (q.shape[2], k.shape[2])
    mask = Mask(effective_window(window, kv_len, causal), softcap, cu_seqlens, max_seqlen)
    key = tuning_key(torch.cuda.get_device_name(q.device), head_dim, q.dtype, causal, seq_len,
                     kv_len, fp32_precision, window=mask.window, softcap=softcap, varlen=varlen)
    candidates = [cfg for cfg in candidate_configs(head_dim, q.dtype, fp32_precision)
                  if not (varlen and cfg.warp_specialize)]  # the dense kernel's option only

    def call(cfg: LaunchConfig) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        return lambda: attention_forward(q, k, v, causal=causal, scale=scale, config=cfg,
                                         fp32_precision=fp32_precision, **mask.keywords())

    expected = call(candidates[0])()[0]

    def checked(cfg: LaunchConfig) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        # A candidate is timed only once its output agrees with the first candidate's: a fast
        # configuration that computes garbage (one warp-specialized probe returned NaN) must
        # not win. tuning.tune skips a candidate that raises.
        run = call(cfg)
        got = run()[0]
        if not torch.allclose(got.float(), expected.float(), atol=2e-2, rtol=2e-2):
            raise ArithmeticError(f"{cfg} disagrees with {candidates[0]}")
        return run

    return tuning.tune(key, candidates, make=checked, encode=lambda cfg: cfg._asdict(),
                       decode=lambda d: LaunchConfig(**d))


def _tma_ready(t: torch.Tensor) -> torch.Tensor:
    """The copy engine needs a unit-stride last dim and 16-byte aligned base and strides."""
    aligned = (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
               and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1]))
    return t if aligned else t.contiguous()


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
    config: LaunchConfig | None = None, fp32_precision: str = "tf32", window: int | None = None,
    softcap: float | None = None, cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over q (B, H, N, D) and k, v (B, Hkv, Nk, D), or a packed ragged batch.

    Returns the output in q's dtype and the fp32 natural-log log-sum-exp (B, H, N). ``config``
    picks the tile shape (see ``candidate_configs``); by default the untuned first candidate.
    ``fp32_precision`` is how fp32 inputs are multiplied on a GPU: "tf32" or "ieee".
    ``window``: query i sees keys i + Nk - N - window .. i + Nk - N (needs causal);
    ``softcap``: scores scale·q·kᵀ capped as softcap·tanh(s / softcap) before the softmax.
    With ``cu_seqlens`` (B + 1 int32 offsets) q is (T, H, D) and k, v (T, Hkv, D), each
    sequence attending within itself (causally, windowed, from its own start); the output is
    (T, H, D) and the LSE (H, T), each head's tokens contiguous (flash-attn's varlen layout).
    ``max_seqlen`` is the longest sequence (computed, with a device sync, when not given).
    """
    if cu_seqlens is not None and max_seqlen is None:
        max_seqlen = longest(cu_seqlens)
    mask = Mask(window, softcap, cu_seqlens, max_seqlen)
    _check_inputs(q, k, v, causal, mask)
    precision = dot_precision(q.dtype, fp32_precision)
    packed = cu_seqlens is not None
    seq_len, kv_len = (max_seqlen, max_seqlen) if packed else (q.shape[2], k.shape[2])
    window = effective_window(window, kv_len, causal)
    # TRITON_INTERPRET=1 (set before triton is imported) runs the kernel on triton's CPU
    # interpreter, which needs the workarounds this flag turns on.
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    cfg = config or _launch_config(q.shape[-1], q.dtype, interpret, precision)
    # The features are constexprs (off: the dense kernel's code) with runtime values; the
    # softcap's two constants fold its scale and log2(e) (triton_flash_tiles.capped_scores).
    launch = dict(
        qk_scale=scale * _LOG2E, window=0 if window is None else window,
        cap_in=0.0 if softcap is None else 2.0 * scale * _LOG2E / softcap,
        cap_out=0.0 if softcap is None else softcap * _LOG2E,
        BLOCK_D=triton.next_power_of_2(q.shape[-1]), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        CAUSAL=causal, INTERPRET=interpret, DOT_PRECISION=precision, WINDOW=window is not None,
        SOFTCAP=softcap is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if packed:
        return _varlen_forward(q, k, v, cu_seqlens, max_seqlen, launch)
    if cfg.warp_specialize:  # the dense kernel's option only (tuned_config)
        launch["WARP_SPECIALIZE"] = True
    return _dense_forward(q, k, v, launch)


def _dense_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, launch: dict
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, seq_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    block_m, block_n, block_d = launch["BLOCK_M"], launch["BLOCK_N"], launch["BLOCK_D"]
    q, k, v = _tma_ready(q), _tma_ready(k), _tma_ready(v)
    out = torch.empty((batch, heads, seq_len, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(seq_len, block_m), batch * heads)
    if launch.get("WARP_SPECIALIZE"):
        _use_torch_allocator()
        _attn_fwd_kernel[grid](q, k, v, out, lse, heads, heads // kv_heads, seq_len, kv_len,
                               q_shape=tuple(q.shape), kv_shape=tuple(k.shape), q_strides=q.stride(),
                               k_strides=k.stride(), v_strides=v.stride(),
                               o_strides=out.stride(), **launch)
        return out, lse
    desc_q = TensorDescriptor.from_tensor(q, [1, 1, block_m, block_d])
    desc_o = TensorDescriptor.from_tensor(out, [1, 1, block_m, block_d])
    desc_k = TensorDescriptor.from_tensor(k, [1, 1, block_n, block_d])
    desc_v = TensorDescriptor.from_tensor(v, [1, 1, block_n, block_d])
    _attn_fwd_kernel[grid](desc_q, desc_k, desc_v, desc_o, lse, heads, heads // kv_heads,
                           seq_len, kv_len, q_shape=None, kv_shape=None, q_strides=None,
                           k_strides=None, v_strides=None, o_strides=None, **launch)
    return out, lse


def _use_torch_allocator() -> None:
    """Descriptors made inside a kernel live in global scratch that Triton asks its allocator
    for; the default one refuses. Torch's caching allocator serves it, so the scratch costs
    what any other temporary does."""
    if not getattr(_use_torch_allocator, "done", False):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        triton.set_allocator(lambda size, alignment, stream: torch.empty(
            size, dtype=torch.int8, device=device))
        _use_torch_allocator.done = True


def _varlen_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                    max_seqlen: int, launch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    total, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    block_m, block_n, block_d = launch["BLOCK_M"], launch["BLOCK_N"], launch["BLOCK_D"]
    # (T, H, D) as (1, H, T, D): the tile loads of the dense kernel, rows counted in tokens.
    q, k, v = (_tma_ready(t.unsqueeze(0).transpose(1, 2)) for t in (q, k, v))
    out = torch.empty((total, heads, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(max_seqlen, block_m), (cu_seqlens.numel() - 1) * heads)
    _attn_fwd_varlen_kernel[grid](
        TensorDescriptor.from_tensor(q, [1, 1, block_m, block_d]),
        TensorDescriptor.from_tensor(k, [1, 1, block_n, block_d]),
        TensorDescriptor.from_tensor(v, [1, 1, block_n, block_d]),
        out, lse, cu_seqlens.contiguous(), out.stride(0), out.stride(1), heads,
        heads // kv_heads, total, head_dim, **launch)
    return out, lse


class _FlashAttention(torch.autograd.Function):
    """attention_forward with our Triton backward (kernels/triton_flash_bwd.py) for autograd."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, config: LaunchConfig | None,
                fp32_precision: str, mask: Mask):
        out, lse = attention_forward(q, k, v, causal=causal, scale=scale, config=config,
                                     fp32_precision=fp32_precision, **mask.keywords())
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.fp32_precision, ctx.mask = causal, scale, fp32_precision, mask
        return out

    @staticmethod
    def backward(ctx, dout):
        from flashbench.kernels.triton_flash_bwd import attention_backward

        missing = ctx.mask.features() - support.BACKWARD_FEATURES
        if missing:
            raise NotImplementedError(f"backward of {feature_words(missing)}: not yet")
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(q, k, v, out, lse, dout, causal=ctx.causal,
                                        scale=ctx.scale, fp32_precision=ctx.fp32_precision,
                                        **ctx.mask.keywords())
        return dq, dk, dv, None, None, None, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
              config: LaunchConfig | None = None, fp32_precision: str = "tf32",
              window: int | None = None, softcap: float | None = None,
              cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None
              ) -> torch.Tensor:
    """Differentiable attention (``attention_forward``'s arguments and layouts): our forward
    kernel, and our backward kernels under autograd (for the features in
    BACKWARD_FEATURES), both multiplying fp32 inputs as ``fp32_precision`` says."""
    if cu_seqlens is not None and max_seqlen is None:
        max_seqlen = longest(cu_seqlens)
    kv_len = k.shape[2] if cu_seqlens is None else max_seqlen
    # The window the kernels run: one that hides nothing is causal, forward and backward.
    mask = Mask(effective_window(window, kv_len, causal), softcap, cu_seqlens, max_seqlen)
    return _FlashAttention.apply(q, k, v, causal, scale, config, fp32_precision, mask)


def _as_inputs(first: AttentionInputs | torch.Tensor, k: torch.Tensor | None,
               v: torch.Tensor | None, causal: bool | None, scale: float | None
               ) -> AttentionInputs:
    """The sweep's AttentionInputs, or dense (q, k, v, causal, scale) as scripts pass them."""
    if isinstance(first, AttentionInputs):
        return first
    if k is None or v is None or causal is None or scale is None:
        raise TypeError("give AttentionInputs, or q, k, v with causal= and scale=")
    return AttentionInputs(first, k, v, causal=causal, scale=scale)


def _mask_of(inputs: AttentionInputs) -> Mask:
    """The inputs' window (None where it hides nothing), softcap and packing."""
    packed = inputs.layout == "ragged"
    kv_len = {"ragged": inputs.max_seqlen, "paged": inputs.kv_len}.get(inputs.layout)
    window = effective_window(inputs.window, kv_len or inputs.k.shape[2], inputs.causal)
    return Mask(window, inputs.softcap, inputs.cu_seqlens if packed else None,
                inputs.max_seqlen if packed else None)


def _route(inputs: AttentionInputs) -> str:
    """The kernel a call of these inputs runs (a row's resolved_backend): "triton-flash",
    "triton-flash-varlen" (a ragged batch), "triton-decode" (a decode shape whose features
    the decode kernel implements, forward only) or "triton-decode-paged" (a paged cache)."""
    if inputs.layout == "ragged":
        return "triton-flash-varlen"
    if inputs.layout == "paged":
        return "triton-decode-paged"
    q, k = inputs.q, inputs.k
    heads, seq_len, head_dim = q.shape[1], q.shape[2], q.shape[3]
    decode = not q.requires_grad and support.decode_reason(
        heads=heads, kv_heads=k.shape[1], seq_len=seq_len, kv_len=k.shape[2], head_dim=head_dim,
        dtype=q.dtype, causal=inputs.causal, features=_mask_of(inputs).features()) is None
    return "triton-decode" if decode else "triton-flash"


def kernel_name(inputs: AttentionInputs | torch.Tensor, k: torch.Tensor | None = None, *,
                causal: bool | None = None) -> str:
    """Which of our kernels ``prepare`` runs for these inputs (a row's resolved_backend);
    dense tensors (q, k, causal=) are taken too."""
    if not isinstance(inputs, AttentionInputs):
        inputs = _as_inputs(inputs, k, k, causal, 1.0)
    return _route(inputs)


def _decode_call(inputs: AttentionInputs, route: str, fp32_precision: str
                 ) -> Callable[[], torch.Tensor]:
    from flashbench.kernels import triton_decode

    extra = _mask_of(inputs).keywords()
    if route == "triton-decode-paged":
        reason = support.decode_reason(
            heads=inputs.q.shape[1], kv_heads=inputs.k.shape[2], seq_len=inputs.q.shape[2],
            kv_len=inputs.kv_len, head_dim=inputs.q.shape[3], dtype=inputs.q.dtype,
            causal=inputs.causal, features=_mask_of(inputs).features() | {"paged"})
        if reason is not None:
            raise ValueError(f"a paged KV cache is read by the decode kernel only: {reason}")
        extra |= {"block_table": inputs.block_table, "cache_seqlens": inputs.cache_seqlens}
    q, k, v = inputs.tensors
    # Tuned here, outside every timed call, as the prefill kernel is in prepare.
    config, _ = triton_decode.tuned_config(q, k, v, causal=inputs.causal, scale=inputs.scale,
                                           fp32_precision=fp32_precision, **extra)
    if config is not None:
        extra["config"] = config
    return lambda: triton_decode.decode_forward(q, k, v, causal=inputs.causal,
                                                scale=inputs.scale,
                                                fp32_precision=fp32_precision, **extra)[0]


def prepare(inputs: AttentionInputs | torch.Tensor, k: torch.Tensor | None = None,
            v: torch.Tensor | None = None, *, causal: bool | None = None,
            scale: float | None = None, fp32_precision: str = "tf32"
            ) -> Callable[[], torch.Tensor]:
    """A zero-argument call of the right kernel for the inputs (``_route``): split-KV decode
    for short queries against a long cache (forward only, and the features the decode kernel
    implements), else the tuned prefill kernel, dense or packed, differentiable through our
    backward. Tuning happens here, outside any timed call. Every kernel multiplies fp32 inputs
    as ``fp32_precision`` says ("tf32" or "ieee"). Dense tensors (q, k, v, causal=, scale=)
    are taken too."""
    inputs = _as_inputs(inputs, k, v, causal, scale)
    dot_precision(inputs.q.dtype, fp32_precision)  # a bad value fails here, not in the samples
    route = _route(inputs)
    if route.startswith("triton-decode"):
        return _decode_call(inputs, route, fp32_precision)
    q, k, v = inputs.tensors
    causal, scale, extra = inputs.causal, inputs.scale, _mask_of(inputs).keywords()
    config, _ = tuned_config(q, k, v, causal=causal, scale=scale, fp32_precision=fp32_precision,
                             **extra)
    return lambda: attention(q, k, v, causal=causal, scale=scale, config=config,
                             fp32_precision=fp32_precision, **extra)
