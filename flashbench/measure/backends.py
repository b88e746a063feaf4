"""What each registered backend does on the device: prepare a call, say why it cannot run, name what ran.

flashbench.core.registry declares every backend once; this module gives each declaration its
torch-side behaviour: the built-ins by family (triton, sdpa, naive), plugins from the callables
they registered. Each backend turns inputs into a zero-argument callable (set-up stays outside
the timed region) and says, before anything runs, why it cannot run a case or run here at all.
Importing this module imports torch; the CLI imports it only inside commands.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from flashbench.core import registry as declared
from flashbench.core.cases import Case
from flashbench.core.registry import BackendSpec

__all__ = ["Backend", "Prepare", "get_backend", "registry", "torch_dtype"]

# (q, k, v, *, causal, scale) -> run(); a backend declared fp32_matmul="sweep" (ours) also
# takes fp32_precision, the config's "tf32" or "ieee".
Prepare = Callable[..., Callable[[], torch.Tensor]]

_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    return _TORCH_DTYPES[name]


@dataclass(frozen=True, slots=True)
class Backend:
    spec: BackendSpec
    prepare: Prepare
    # Why this backend cannot run on ``device`` at all (None: it can).
    unavailable: Callable[[torch.device], str | None]
    # Why it cannot run this case (None: it can, as far as can be told without running).
    unsupported: Callable[[Case], str | None]
    # What actually runs (SDPA's dispatch) for these inputs; None when it is the backend itself.
    resolve: Callable[..., str] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def description(self) -> str:
        return self.spec.description


def _never(_: object) -> None:
    return None


def _causal_supported(case: Case) -> str | None:
    if case.causal and case.seq_len > case.kv_len:
        return ("causal with seq_len > kv_len: with the diagonal aligned to the end, "
                "the first queries would see no key")
    return None


def _triton(spec: BackendSpec) -> Backend:
    # The kernel module imports triton: only when a case needs it, so that `flashbench list`
    # can say triton is missing instead of failing.
    def unavailable(device: torch.device) -> str | None:
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return "no CUDA device, and TRITON_INTERPRET=1 was not set before triton was imported"
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return f"triton is not installed ({e})"
        return None

    def unsupported(case: Case) -> str | None:
        from flashbench.kernels import triton_flash

        return triton_flash.unsupported_reason(
            heads=case.heads, kv_heads=case.kv_heads, seq_len=case.seq_len, kv_len=case.kv_len,
            head_dim=case.head_dim, dtype=torch_dtype(case.dtype), causal=case.causal)

    def prepare(q, k, v, *, causal: bool, scale: float,
                fp32_precision: str = "tf32") -> Callable[[], torch.Tensor]:
        from flashbench.kernels import triton_flash

        return triton_flash.prepare(q, k, v, causal=causal, scale=scale,
                                    fp32_precision=fp32_precision)

    def resolve(q, k, v, *, causal: bool) -> str:
        from flashbench.kernels import triton_flash

        return triton_flash.kernel_name(q, k, causal=causal)

    return Backend(spec, prepare, unavailable, unsupported, resolve=resolve)


def _sdpa(spec: BackendSpec) -> Backend:
    name = spec.name

    def unavailable(device: torch.device) -> str | None:
        if name in ("sdpa", "sdpa-math"):
            return None
        if device.type == "cpu":
            return None if name == "sdpa-flash" else "needs a CUDA device"
        if name == "sdpa-flash" and not torch.backends.cuda.is_flash_attention_available():
            return "this PyTorch build has no flash attention kernel"
        if name == "sdpa-cudnn" and not torch.backends.cudnn.is_available():
            return "cuDNN is not available to this PyTorch"
        return None

    # kernels.sdpa imports torch._dynamo (two seconds): only a sweep that runs SDPA pays for it.
    def prepare(q, k, v, *, causal: bool, scale: float) -> Callable[[], torch.Tensor]:
        from flashbench.kernels import sdpa

        return sdpa.prepare(name, q, k, v, causal=causal, scale=scale)

    def resolve(q, k, v, *, causal: bool) -> str:
        from flashbench.kernels import sdpa

        return sdpa.resolve(name, q, k, v, causal=causal)

    return Backend(spec, prepare, unavailable, _causal_supported, resolve=resolve)


def _naive(spec: BackendSpec) -> Backend:
    from flashbench.kernels import naive

    return Backend(spec, naive.prepare, _never, _causal_supported)


def _plugin(spec: BackendSpec) -> Backend:
    call = spec.call
    assert call is not None
    if spec.prepares:
        prepare = call
    else:
        def prepare(q, k, v, *, causal: bool, scale: float) -> Callable[[], torch.Tensor]:
            return lambda: call(q, k, v, causal=causal, scale=scale)

    own = spec.unsupported

    def unsupported(case: Case) -> str | None:
        return _causal_supported(case) or (own(case) if own is not None else None)

    return Backend(spec, prepare, _never, unsupported, resolve=spec.resolve)


_BY_FAMILY = {"triton": _triton, "sdpa": _sdpa, "naive": _naive, "plugin": _plugin}
_BUILT: dict[str, Backend] = {}


def registry() -> dict[str, Backend]:
    """Every declared backend, built-ins then plugins, with its device-side behaviour."""
    specs = declared.backends()
    for name in [n for n in _BUILT if n not in specs]:
        del _BUILT[name]  # a plugin forgotten (a test's fresh registry)
    for name, spec in specs.items():
        if name not in _BUILT or _BUILT[name].spec is not spec:  # a plugin file loaded again
            _BUILT[name] = _BY_FAMILY[spec.family](spec)
    return {name: _BUILT[name] for name in specs}


def get_backend(name: str) -> Backend:
    return registry()[name]
