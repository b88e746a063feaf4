"""The registry of attention backends: one small frozen record per backend.

Each backend turns inputs into a zero-argument callable (set-up stays outside the timed
region) and says, before anything runs, why it cannot run a case or cannot run here at all.
Plugin backends (flashbench.core.plugins) join the registry as they are registered.
Importing this module imports torch; the CLI imports it only inside commands.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from flashbench.core.cases import Case
from flashbench.core.config import BUILTIN_BACKENDS
from flashbench.core.plugins import PluginBackend, plugin_backends

__all__ = ["Backend", "Prepare", "get_backend", "registry"]

Prepare = Callable[..., Callable[[], torch.Tensor]]  # (q, k, v, *, causal, scale) -> run()


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    family: str  # "triton", "sdpa", "naive", "plugin"
    description: str
    prepare: Prepare
    # Why this backend cannot run on ``device`` at all (None: it can).
    unavailable: Callable[[torch.device], str | None]
    # Why it cannot run this case (None: it can, as far as can be told without running).
    unsupported: Callable[[Case], str | None]
    # What actually runs (SDPA's dispatch) for these inputs; None when it is the backend itself.
    resolve: Callable[..., str] | None = None


def _never(_: object) -> None:
    return None


def _triton_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA device, and TRITON_INTERPRET=1 was not set before triton was imported"
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not installed ({e})"
    return None


def _triton_unsupported(case: Case) -> str | None:
    from flashbench.kernels import triton_flash

    return triton_flash.unsupported_reason(
        heads=case.heads, kv_heads=case.kv_heads, seq_len=case.seq_len, kv_len=case.kv_len,
        head_dim=case.head_dim, dtype=_TORCH_DTYPES[case.dtype], causal=case.causal)


def _triton_prepare(q, k, v, *, causal: bool, scale: float) -> Callable[[], torch.Tensor]:
    from flashbench.kernels import triton_flash

    return triton_flash.prepare(q, k, v, causal=causal, scale=scale)


def _triton_resolve(q, k, v, *, causal: bool) -> str:
    from flashbench.kernels import triton_flash

    return triton_flash.kernel_name(q, k, causal=causal)


def _sdpa_unavailable(name: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        if name in ("sdpa", "sdpa-math"):
            return None
        if device.type == "cpu":
            return None if name == "sdpa-flash" else "needs a CUDA device"
        if name == "sdpa-flash" and not torch.backends.cuda.is_flash_attention_available():
            return "this PyTorch build has no flash attention kernel"
        if name == "sdpa-cudnn" and not torch.backends.cudnn.is_available():
            return "cuDNN is not available to this PyTorch"
        return None

    return check


# kernels.sdpa imports torch._dynamo (two seconds): only a sweep that runs SDPA pays for it.
def _sdpa_prepare(name: str) -> Prepare:
    def prepare(q, k, v, *, causal: bool, scale: float) -> Callable[[], torch.Tensor]:
        from flashbench.kernels import sdpa

        return sdpa.prepare(name, q, k, v, causal=causal, scale=scale)

    return prepare


def _sdpa_resolve(name: str) -> Callable[..., str]:
    def resolve(q, k, v, *, causal: bool) -> str:
        from flashbench.kernels import sdpa

        return sdpa.resolve(name, q, k, v, causal=causal)

    return resolve


def _causal_supported(case: Case) -> str | None:
    if case.causal and case.seq_len > case.kv_len:
        return ("causal with seq_len > kv_len: with the diagonal aligned to the end, "
                "the first queries would see no key")
    return None


_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _build() -> dict[str, Backend]:
    from flashbench.kernels import naive

    backends = {
        "triton": Backend("triton", "triton", "flashbench's Triton FlashAttention-2 kernel",
                          _triton_prepare, _triton_unavailable, _triton_unsupported,
                          resolve=_triton_resolve),
        "naive": Backend("naive", "naive", "materialized S and P, softmax in fp32",
                         naive.prepare, _never, _causal_supported),
    }
    descriptions = {
        "sdpa": "PyTorch SDPA, its own choice of backend",
        "sdpa-flash": "PyTorch SDPA forced to its FlashAttention-2 backend",
        "sdpa-efficient": "PyTorch SDPA forced to its memory-efficient (xformers) backend",
        "sdpa-cudnn": "PyTorch SDPA forced to its cuDNN backend",
        "sdpa-math": "PyTorch SDPA forced to its math (materialized) backend",
    }
    for name in descriptions:
        backends[name] = Backend(name, "sdpa", descriptions[name], prepare=_sdpa_prepare(name),
                                 unavailable=_sdpa_unavailable(name),
                                 unsupported=_causal_supported, resolve=_sdpa_resolve(name))
    assert set(backends) == set(BUILTIN_BACKENDS)
    return {name: backends[name] for name in BUILTIN_BACKENDS}


def _from_plugin(plugin: PluginBackend) -> Backend:
    forward = plugin.forward

    def prepare(q, k, v, *, causal: bool, scale: float) -> Callable[[], torch.Tensor]:
        return lambda: forward(q, k, v, causal=causal, scale=scale)

    return Backend(plugin.name, "plugin", plugin.description, prepare, _never, _causal_supported)


_REGISTRY: dict[str, Backend] | None = None


def registry() -> dict[str, Backend]:
    """Built-in backends, then plugin backends registered so far (one dict, updated in place)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _build()
    plugins = plugin_backends()
    for name in [n for n, b in _REGISTRY.items() if b.family == "plugin" and n not in plugins]:
        del _REGISTRY[name]
    for name, plugin in plugins.items():
        known = _REGISTRY.get(name)
        if known is None or known.family == "plugin":  # a plugin file loaded again replaces its own
            _REGISTRY[name] = _from_plugin(plugin)
    return _REGISTRY


def get_backend(name: str) -> Backend:
    return registry()[name]


def torch_dtype(name: str) -> torch.dtype:
    return _TORCH_DTYPES[name]
