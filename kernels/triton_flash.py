"""FlashAttention-2 style attention forward in Triton: TMA tiles, online softmax, GQA, causal, LSE."""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

__all__ = ["FEATURES", "FP32_PRECISIONS", "SUPPORTED_HEAD_DIMS", "LaunchConfig", "attention_forward",
           "candidate_configs", "attention", "dot_precision", "kernel_name", "prepare",
           "tuned_config", "unsupported_reason"]

SUPPORTED_HEAD_DIMS: tuple[int, ...] = (32, 64, 96, 128, 256)
# What these kernels implement beyond dense attention (flashbench.core.cases.FEATURES).
FEATURES: frozenset[str] = frozenset()
_SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
# Working in base 2 turns every exp into one exp2 and lets the softmax scale share the score multiply.
_LOG2E = 1.4426950408889634
# What tl.dot does with fp32 tiles on a GPU: "tf32" rounds the inputs to TF32 for the tensor
# cores (about 1e-3 relative error), "ieee" multiplies in full fp32 (FMA units, slower). The
# interpreter's tl.dot is exact IEEE fp32 whatever it is told.
FP32_PRECISIONS: tuple[str, ...] = ("tf32", "ieee")


def dot_precision(dtype: torch.dtype, fp32_precision: str) -> str:
    """The DOT_PRECISION constexpr a launch gets: the setting for fp32 inputs; for 16-bit inputs
    (where it means nothing) always "tf32", so their compiled kernels do not depend on it."""
    if fp32_precision not in FP32_PRECISIONS:
        raise ValueError(f"fp32_precision {fp32_precision!r} is not one of {FP32_PRECISIONS}")
    return fp32_precision if dtype == torch.float32 else "tf32"


@triton.jit
def _load_tile(desc, batch, head, start, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
               INTERPRET: tl.constexpr):
    # A 4-D (batch, head, row, dim) descriptor: the copy engine zero-fills rows past the end of
    # this head and lanes past the head dim, so neither a next head nor padding leaks in.
    tile = desc.load([batch, head, start, 0]).reshape(ROWS, BLOCK_D)
    if INTERPRET:
        # The interpreter gets bf16 arithmetic wrong; its fp32 is exact IEEE.
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _attend_tiles(
    acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, lo, hi, offs_m, kv_len, diag, qk_scale,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    # The interpreter's scalars are 1-element numpy arrays, which range() rejects under
    # numpy >= 2.4; a while loop only needs their truth value. The GPU keeps the for loop,
    # which is what the software pipeliner (num_stages) works on.
    if INTERPRET:
        start_n = lo
        while start_n < hi:
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, start_n, offs_m, offs_n,
                kv_len, diag, qk_scale, MASKED, CAUSAL, INTERPRET, BLOCK_N, BLOCK_D,
                DOT_PRECISION)
            start_n += BLOCK_N
    else:
        for start_n in range(lo, hi, BLOCK_N):
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, start_n, offs_m, offs_n,
                kv_len, diag, qk_scale, MASKED, CAUSAL, INTERPRET, BLOCK_N, BLOCK_D,
                DOT_PRECISION)
    return acc, l_i, m_i


@triton.jit
def _attend_rows(
    q, desc_k, desc_v, batch, kv_head, lo, unmasked_hi, hi, offs_m, kv_len, diag, qk_scale,
    CAUSAL: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One query tile against keys [lo, hi): the tiles every row sees in full up to
    ``unmasked_hi``, then the masked band. Returns the normalised output, the natural-log
    log-sum-exp, and which rows saw no key (output 0, LSE -inf: they weigh nothing in a
    combine)."""
    # A finite floor instead of -inf: a row that has seen no key yet then gets
    # exp2(-inf - floor) = 0 rather than NaN, and ends with l_i == 0, which is guarded below.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, lo, unmasked_hi, offs_m, kv_len, diag,
        qk_scale, MASKED=False, CAUSAL=CAUSAL, INTERPRET=INTERPRET, BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D, DOT_PRECISION=DOT_PRECISION)
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, unmasked_hi, hi, offs_m, kv_len, diag,
        qk_scale, MASKED=True, CAUSAL=CAUSAL, INTERPRET=INTERPRET, BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D, DOT_PRECISION=DOT_PRECISION)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * (1.0 / l_safe)[:, None]
    # Back from base 2 to the natural log that callers (and a backward pass) expect.
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    return out, lse


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, start_n, offs_m, offs_n, kv_len, diag,
    qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    k = _load_tile(desc_k, batch, kv_head, start_n, BLOCK_N, BLOCK_D, INTERPRET)
    v = _load_tile(desc_v, batch, kv_head, start_n, BLOCK_N, BLOCK_D, INTERPRET)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if MASKED:
        cols = start_n + offs_n
        keep = cols[None, :] < kv_len
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
        qk = tl.where(keep, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
    else:
        # Scale inside the max and the exponent, so the subtraction fuses into one FMA per score.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_kernel(
    desc_q, desc_k, desc_v, desc_o, Lse,
    num_heads, group, seq_len, kv_len, qk_scale,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, INTERPRET: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Under a causal mask the last query blocks see the most keys; launching them first shortens
    # the tail of the grid.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    kv_head = head // group  # GQA: the query heads of a group share one K/V head, no copies

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_tile(desc_q, batch, head, start_m, BLOCK_M, BLOCK_D, INTERPRET)

    # Bottom-right causal alignment: row i sees key j iff j <= i + diag.
    diag = kv_len - seq_len
    if CAUSAL:
        # Keys the block's first row sees are seen by every row; keys past its last row's
        # diagonal by none: those tiles are skipped, and only the diagonal band is masked.
        unmasked_hi = tl.minimum(start_m + diag + 1, kv_len)
        hi = tl.minimum(start_m + BLOCK_M + diag, kv_len)
    else:
        unmasked_hi = kv_len
        hi = kv_len
    unmasked_hi = tl.maximum(unmasked_hi, 0) // BLOCK_N * BLOCK_N
    out, lse = _attend_rows(q, desc_k, desc_v, batch, kv_head, 0, unmasked_hi, hi, offs_m,
                            kv_len, diag, qk_scale, CAUSAL, INTERPRET, BLOCK_M, BLOCK_N, BLOCK_D,
                            DOT_PRECISION)
    # The descriptor clips the store to this head's rows and the real head dim.
    desc_o.store([batch, head, start_m, 0],
                 out.to(desc_o.dtype).reshape(1, 1, BLOCK_M, BLOCK_D))
    tl.store(Lse + pid_bh.to(tl.int64) * seq_len + offs_m, lse, mask=offs_m < seq_len)


class LaunchConfig(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def _launch_config(head_dim: int, dtype: torch.dtype, interpret: bool,
                   fp32_precision: str = "tf32") -> LaunchConfig:
    """The configuration used without tuning: the interpreter's, and the GPU's fallback."""
    if interpret:
        # The numpy interpreter pays per program and per op; small tiles keep tests fast, and
        # BLOCK_M != BLOCK_N makes the causal tail span several K/V tiles.
        return LaunchConfig(block_m=32, block_n=16, num_warps=1, num_stages=1)
    return candidate_configs(head_dim, dtype, fp32_precision)[0]


def candidate_configs(head_dim: int, dtype: torch.dtype,
                      fp32_precision: str = "tf32") -> list[LaunchConfig]:
    """GPU configurations worth timing for a head dim and dtype, the usual best first.

    Measured on an H100 (kernels/NOTES.md): each fits its pipeline stages in shared memory and
    compiles without register spills for sm_90 (scripts/inspect_kernel.py). Dropped after
    measuring: 256-row tiles (16 warps: slower everywhere), 4 warps on 128x64 at D=128 (spills).
    """
    if dot_precision(dtype, fp32_precision) == "ieee":
        # FMA tiles hold the whole product in registers: the TF32 tiles below spill 0.4-5 KB
        # per thread (scripts/inspect_kernel.py --fp32-precision ieee). These spill none at
        # D=64 and the least found at D=128 and 256; not yet timed on a GPU.
        if head_dim <= 128:
            return [LaunchConfig(64, 16, 8, 2), LaunchConfig(32, 16, 4, 2),
                    LaunchConfig(32, 32, 8, 2)]
        return [LaunchConfig(32, 32, 8, 2), LaunchConfig(16, 32, 4, 2)]
    if dtype == torch.float32:
        # 4-byte tiles (TF32 tensor cores): smaller tiles keep the stages in shared memory.
        if head_dim <= 128:
            return [LaunchConfig(64, 32, 4, 2), LaunchConfig(64, 64, 4, 2),
                    LaunchConfig(128, 32, 8, 2)]
        return [LaunchConfig(64, 16, 8, 2), LaunchConfig(64, 32, 8, 2)]
    if head_dim <= 64:
        return [LaunchConfig(128, 64, 8, 3), LaunchConfig(128, 64, 4, 3),
                LaunchConfig(128, 128, 4, 3), LaunchConfig(64, 64, 4, 4)]
    if head_dim <= 128:
        return [LaunchConfig(128, 128, 8, 3), LaunchConfig(128, 64, 8, 3),
                LaunchConfig(64, 64, 4, 3), LaunchConfig(128, 64, 8, 4)]
    # D = 256: eight warps, not four: a 64x256 fp32 accumulator over four warps spills.
    return [LaunchConfig(64, 32, 8, 2), LaunchConfig(64, 64, 8, 2), LaunchConfig(128, 32, 8, 2)]


def _length_bucket(n: int) -> int:
    return triton.next_power_of_2(max(n, 16))


def tuned_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                 scale: float, fp32_precision: str = "tf32") -> tuple[LaunchConfig, float]:
    """The fastest candidate for this shape class on this GPU, and the seconds spent tuning.

    Tuned once per (GPU, triton version, head dim, dtype, causal, length buckets, and for fp32
    the matmul precision) and cached on disk (flashbench.measure.tuning); the interpreter has
    one fixed configuration.
    """
    from flashbench.measure import tuning

    head_dim = q.shape[-1]
    if os.environ.get("TRITON_INTERPRET") == "1" or not q.is_cuda:
        return _launch_config(head_dim, q.dtype, True), 0.0
    key = "|".join(["triton_flash.fwd", torch.cuda.get_device_name(q.device),
                    f"triton {triton.__version__}", f"D{head_dim}", str(q.dtype).removeprefix("torch."),
                    "causal" if causal else "full", f"N{_length_bucket(q.shape[2])}",
                    f"Nk{_length_bucket(k.shape[2])}"])
    # FMA and tensor-core tiles have different winners; TF32 keeps the key it always had.
    if dot_precision(q.dtype, fp32_precision) == "ieee":
        key += "|ieee"
    return tuning.tune(
        key, candidate_configs(head_dim, q.dtype, fp32_precision),
        make=lambda cfg: lambda: attention_forward(q, k, v, causal=causal, scale=scale,
                                                   config=cfg, fp32_precision=fp32_precision),
        encode=lambda cfg: cfg._asdict(), decode=lambda d: LaunchConfig(**d))


def unsupported_reason(
    *, heads: int, kv_heads: int, seq_len: int, kv_len: int, head_dim: int, dtype: torch.dtype,
    causal: bool,
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
    return None


def _tma_ready(t: torch.Tensor) -> torch.Tensor:
    """The copy engine needs a unit-stride last dim and 16-byte aligned base and strides."""
    aligned = (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
               and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1]))
    return t if aligned else t.contiguous()


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k and v must be 4-D: (batch, heads, seq_len, head_dim)")
    batch, heads, seq_len, head_dim = q.shape
    kv_batch, kv_heads, kv_len, kv_dim = k.shape
    if v.shape != k.shape or kv_batch != batch or kv_dim != head_dim:
        raise ValueError(f"incompatible shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k and v must share dtype and device")
    reason = unsupported_reason(heads=heads, kv_heads=kv_heads, seq_len=seq_len, kv_len=kv_len,
                                head_dim=head_dim, dtype=q.dtype, causal=causal)
    if reason is not None:
        raise ValueError(reason)


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
    config: LaunchConfig | None = None, fp32_precision: str = "tf32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over q (B, H, N, D) and k, v (B, Hkv, Nk, D).

    Returns the output in q's dtype and the fp32 natural-log log-sum-exp (B, H, N). ``config``
    picks the tile shape (see ``candidate_configs``); by default the untuned first candidate.
    ``fp32_precision`` is how fp32 inputs are multiplied on a GPU: "tf32" or "ieee".
    """
    _check_inputs(q, k, v, causal)
    precision = dot_precision(q.dtype, fp32_precision)
    batch, heads, seq_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    # TRITON_INTERPRET=1 (set before triton is imported) runs the kernel on triton's CPU
    # interpreter, which needs the workarounds this flag turns on.
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    cfg = config or _launch_config(head_dim, q.dtype, interpret, precision)
    block_d = triton.next_power_of_2(head_dim)
    q, k, v = _tma_ready(q), _tma_ready(k), _tma_ready(v)
    out = torch.empty((batch, heads, seq_len, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    desc_q = TensorDescriptor.from_tensor(q, [1, 1, cfg.block_m, block_d])
    desc_o = TensorDescriptor.from_tensor(out, [1, 1, cfg.block_m, block_d])
    desc_k = TensorDescriptor.from_tensor(k, [1, 1, cfg.block_n, block_d])
    desc_v = TensorDescriptor.from_tensor(v, [1, 1, cfg.block_n, block_d])
    grid = (triton.cdiv(seq_len, cfg.block_m), batch * heads)
    _attn_fwd_kernel[grid](
        desc_q, desc_k, desc_v, desc_o, lse,
        heads, heads // kv_heads, seq_len, kv_len, scale * _LOG2E,
        BLOCK_D=block_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        CAUSAL=causal, INTERPRET=interpret, DOT_PRECISION=precision,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse


class _FlashAttention(torch.autograd.Function):
    """attention_forward with our Triton backward (kernels/triton_flash_bwd.py) for autograd."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, config: LaunchConfig | None,
                fp32_precision: str):
        out, lse = attention_forward(q, k, v, causal=causal, scale=scale, config=config,
                                     fp32_precision=fp32_precision)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.fp32_precision = causal, scale, fp32_precision
        return out

    @staticmethod
    def backward(ctx, dout):
        from flashbench.kernels.triton_flash_bwd import attention_backward

        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(q, k, v, out, lse, dout, causal=ctx.causal,
                                        scale=ctx.scale, fp32_precision=ctx.fp32_precision)
        return dq, dk, dv, None, None, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
              config: LaunchConfig | None = None, fp32_precision: str = "tf32") -> torch.Tensor:
    """Differentiable attention: our forward kernel, and our backward kernels under autograd,
    both multiplying fp32 inputs as ``fp32_precision`` says."""
    return _FlashAttention.apply(q, k, v, causal, scale, config, fp32_precision)


def _uses_decode_kernel(q: torch.Tensor, k: torch.Tensor, causal: bool) -> bool:
    """Short queries against a long KV cache, forward only: the split-KV decode kernel's job."""
    from flashbench.kernels import triton_decode

    batch, heads, seq_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    return (not q.requires_grad
            and triton_decode.is_decode_shape(seq_len, kv_len, heads, kv_heads)
            and triton_decode.unsupported_reason(
                heads=heads, kv_heads=kv_heads, seq_len=seq_len, kv_len=kv_len,
                head_dim=head_dim, dtype=q.dtype, causal=causal) is None)


def kernel_name(q: torch.Tensor, k: torch.Tensor, *, causal: bool) -> str:
    """Which of our kernels ``prepare`` runs for these inputs (a row's resolved_backend)."""
    return "triton-decode" if _uses_decode_kernel(q, k, causal) else "triton-flash"


def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
            scale: float, fp32_precision: str = "tf32") -> Callable[[], torch.Tensor]:
    """A zero-argument call of the right kernel for the shape: split-KV decode for short
    queries against a long cache (forward only), else the tuned prefill kernel, differentiable
    through our backward. Tuning happens here, outside any timed call. Every kernel multiplies
    fp32 inputs as ``fp32_precision`` says ("tf32" or "ieee")."""
    dot_precision(q.dtype, fp32_precision)  # a bad value fails here, not inside the samples
    if _uses_decode_kernel(q, k, causal):
        from flashbench.kernels import triton_decode

        return lambda: triton_decode.decode_forward(q, k, v, causal=causal, scale=scale,
                                                    fp32_precision=fp32_precision)[0]
    config, _ = tuned_config(q, k, v, causal=causal, scale=scale, fp32_precision=fp32_precision)
    return lambda: attention(q, k, v, causal=causal, scale=scale, config=config,
                             fp32_precision=fp32_precision)
