"""What arithmetic a row's fp32 matrix products ran in: TF32 tensor cores or IEEE fp32.

A row's ``matmul_precision`` is decided here from the backend's declaration
(flashbench.core.registry ``fp32_matmul``), the device, the sweep's ``fp32_precision`` and
torch's own TF32 settings as they are when the row is measured. 16-bit cases say null: their
inputs are half precision already, and no backend multiplies them in more than that.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Literal

import torch

from flashbench.core import registry
from flashbench.core.registry import BackendSpec

__all__ = ["MatmulPrecision", "cuda_matmul_precision", "cudnn_precision", "ieee_matmuls",
           "matmul_precision"]

MatmulPrecision = Literal["tf32", "ieee"]


def _tf32_forbidden() -> bool:
    """NVIDIA_TF32_OVERRIDE=0 makes cuBLAS and cuDNN refuse TF32 whatever torch asks (it
    does not reach our Triton kernels, whose TF32 instructions are in their own code)."""
    return os.environ.get("NVIDIA_TF32_OVERRIDE") == "0"


def cuda_matmul_precision() -> MatmulPrecision | None:
    """torch's setting for fp32 cuBLAS products now (naive, SDPA's math backend).

    torch >= 2.9 has ``torch.backends.cuda.matmul.fp32_precision``, which the older flags
    (``allow_tf32``, ``set_float32_matmul_precision``) also set; "none" there means nothing
    was set anywhere, which is IEEE. Reading ``allow_tf32`` instead raises when a program mixed
    the two APIs, so it is only the fallback of an older torch.
    """
    if _tf32_forbidden():
        return "ieee"
    matmul = torch.backends.cuda.matmul
    value = getattr(matmul, "fp32_precision", None)
    if value is None:
        return "tf32" if matmul.allow_tf32 else "ieee"
    return {"tf32": "tf32", "ieee": "ieee", "none": "ieee"}.get(value)


def cudnn_precision() -> MatmulPrecision | None:
    """torch's cuDNN TF32 flag now (``torch.backends.cudnn.allow_tf32``, on by default);
    None when a mix of the old and new precision APIs makes torch refuse to say."""
    if _tf32_forbidden():
        return "ieee"
    try:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    except RuntimeError:
        return None


def matmul_precision(spec: BackendSpec, dtype: str, device: torch.device,
                     resolved: str | None, fp32_precision: str) -> MatmulPrecision | None:
    """The row's ``matmul_precision``: what the backend's fp32 products ran in; None for a
    16-bit case, or when the backend does not say (a plugin that declared nothing)."""
    if dtype != "fp32":
        return None
    how = spec.fp32_matmul
    if how == "resolved":  # SDPA's own choice: that of the backend it picked
        picked = registry.backends().get(resolved or "")
        how = picked.fp32_matmul if picked is not None and picked.name != spec.name else None
    if how in ("ieee", "tf32"):
        return how  # type: ignore[return-value]
    if how is None:
        return None
    if device.type != "cuda":
        # torch's CPU matmuls are IEEE fp32, and so is Triton's interpreter, whatever tl.dot's
        # input_precision says.
        return "ieee"
    if how == "sweep":
        return fp32_precision  # type: ignore[return-value]
    return cuda_matmul_precision() if how == "torch" else cudnn_precision()


@contextmanager
def ieee_matmuls() -> Iterator[None]:
    """cuBLAS fp32 products in IEEE inside the block (the correctness reference), whatever the
    program set; torch's setting is put back afterwards. Through the older API, whose setter
    keeps both APIs in step; left alone when torch refuses to read it (mixed APIs)."""
    try:
        before = torch.get_float32_matmul_precision()
    except RuntimeError:
        before = "highest"
    if before != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if before != "highest":
            torch.set_float32_matmul_precision(before)
