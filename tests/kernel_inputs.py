"""Random attention inputs and a float64 reference shared by the Triton kernels' tests."""

from __future__ import annotations

import os

import torch

# conftest.py turns the interpreter on when there is no GPU; it then runs on CPU tensors.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = (F32, F16, BF16)

# dtype -> (max ||out - ref|| / ||ref||, max |lse - ref_lse|). The reference sees the same
# rounded inputs, so the error is the kernel's own: output rounding plus, on GPU, P rounded
# to the input dtype; the interpreter's fp32 tl.dot is exact, the GPU's fp32 is TF32.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-4) if INTERPRET else (5e-3, 5e-3),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-3),
}


def make_tensor(
    shape: tuple[int, int, int, int], dtype: torch.dtype, gen: torch.Generator, layout: str,
    device: str,
) -> torch.Tensor:
    b, h, n, d = shape
    # Round to the dtype and move before taking views, so the views keep their strides.
    if layout == "bnhd":  # a fused projection's (B, N, H, D) output viewed as (B, H, N, D)
        return torch.randn(b, n, h, d, generator=gen).to(device=device, dtype=dtype).transpose(1, 2)
    if layout == "strided_d":  # head dim not unit-stride
        return torch.randn(b, h, n, 2 * d, generator=gen).to(device=device, dtype=dtype)[..., ::2]
    assert layout == "contiguous"
    return torch.randn(b, h, n, d, generator=gen).to(device=device, dtype=dtype)


def make_inputs(
    b: int, h: int, hkv: int, n: int, nk: int, d: int, dtype: torch.dtype,
    *, layout: str = "contiguous", device: str = DEVICE, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = make_tensor((b, h, n, d), dtype, gen, layout, device)
    k = make_tensor((b, hkv, nk, d), dtype, gen, layout, device)
    v = make_tensor((b, hkv, nk, d), dtype, gen, layout, device)
    return q, k, v


def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
    dtype: torch.dtype = torch.float64, device: str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = (t.to(device=device, dtype=dtype) for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    if causal:
        n, nk = scores.shape[-2:]
        visible = torch.ones(n, nk, dtype=torch.bool, device=device).tril(diagonal=nk - n)
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v, torch.logsumexp(scores, dim=-1)


def assert_matches_reference(out: torch.Tensor, lse: torch.Tensor, q: torch.Tensor,
                             k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                             scale: float) -> None:
    """A kernel's (out, lse) has the right shapes and dtypes, is finite, and is within the
    dtype's tolerance of the float64 reference on the same inputs."""
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()

    ref_out, ref_lse = reference(q, k, v, causal=causal, scale=scale)
    out_tol, lse_tol = TOLERANCES[q.dtype]
    rel = ((out.cpu().double() - ref_out).norm() / ref_out.norm()).item()
    lse_err = (lse.cpu().double() - ref_lse).abs().max().item()
    assert rel < out_tol, f"relative output error {rel:.3e} >= {out_tol:.0e}"
    assert lse_err < lse_tol, f"max lse error {lse_err:.3e} >= {lse_tol:.0e}"


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.to(ref.dtype) - ref).norm() / ref.norm()).item()


def reference_and_sdpa_error(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The GPU tests' yardstick: the fp32 (out, lse) reference on q's device, and the relative
    output error of PyTorch's own kernel on the same (dense) inputs against it."""
    ref, ref_lse = reference(q, k, v, causal=causal, scale=scale, dtype=torch.float32,
                             device=q.device)
    n, nk = q.shape[2], k.shape[2]
    # SDPA's is_causal aligns the diagonal top-left; the kernels' mask is bottom-right.
    visible = (torch.ones(n, nk, dtype=torch.bool, device=q.device).tril(diagonal=nk - n)
               if causal else None)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=visible,
                                                            scale=scale, enable_gqa=True)
    return ref, ref_lse, relative_error(sdpa, ref)


def gradient_inputs(batch: int, heads: int, kv_heads: int, n: int, d: int, dtype: torch.dtype,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The GPU backward tests' inputs: (q, k, v) requiring grad and dout, standard normal from
    a seeded CPU generator (the same numbers on every machine), on the GPU in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, hh, n, d, generator=gen).to("cuda", dtype).requires_grad_()
               for hh in (heads, kv_heads, kv_heads))
    return q, k, v, torch.randn(batch, heads, n, d, generator=gen).to("cuda", dtype)


def assert_gradients_within_twice(ours, theirs, ref, *, peer: str = "SDPA",
                                  slack: float = 1e-4) -> None:
    """Each of our (dq, dk, dv) is within twice the peer's relative error (plus ``slack``)
    against the float64 reference gradients ``ref``."""
    for name, a, b, r in zip("qkv", ours, theirs, ref):
        err = ((a.cpu().double() - r).norm() / r.norm()).item()
        peer_err = ((b.cpu().double() - r).norm() / r.norm()).item()
        assert err <= 2 * peer_err + slack, f"d{name}: {err:.2e} vs {peer} {peer_err:.2e}"


class LaunchSpy:
    """Stands in for a Triton kernel (``monkeypatch.setattr(module, name, LaunchSpy(kernel))``)
    and records the keyword arguments (constexprs) of every launch, then launches it."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.launches: list[dict] = []

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def call(*args, **kwargs):
            self.launches.append(kwargs)
            return launch(*args, **kwargs)

        return call
