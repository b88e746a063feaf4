"""What each registered backend does on the device: prepare a call, say why it cannot run, name what ran.

flashbench.core.registry declares every backend once; this module gives each declaration its
torch-side behaviour: the built-ins by family (triton, sdpa, naive; flex, flash-attn and
flashinfer through their kernel modules), plugins from the callables they registered. Each
backend turns inputs into a zero-argument callable (set-up stays outside the timed region)
and says, before anything runs, why it cannot run a case or run here at all.
Importing this module imports torch; the CLI imports it only inside commands.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

from flashbench.core import registry as declared
from flashbench.core.cases import Case, missing_features
from flashbench.core.registry import BackendSpec
from flashbench.measure.inputs import AttentionInputs, torch_dtype

__all__ = ["Backend", "Prepare", "get_backend", "registry", "torch_dtype"]

# (inputs: AttentionInputs) -> run(); a backend declared fp32_matmul="sweep" (ours) also takes
# fp32_precision, the config's "tf32" or "ieee".
Prepare = Callable[..., Callable[[], torch.Tensor]]

@dataclass(frozen=True, slots=True)
class Backend:
    spec: BackendSpec
    prepare: Prepare
    # Why this backend cannot run on ``device`` at all (None: it can).
    unavailable: Callable[[torch.device], str | None]
    # Why it cannot run this case (None: it can, as far as can be told without running).
    unsupported: Callable[[Case], str | None]
    # What actually runs (SDPA's dispatch) for these inputs; None when it is the backend itself.
    resolve: Callable[[AttentionInputs], str] | None = None

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

    # What runs (per mode, feature and layout: prefill, varlen, decode, paged decode) is the
    # kernels' own knowledge (kernels/triton_flash_support.py).
    def unsupported(case: Case) -> str | None:
        from flashbench.kernels import triton_flash

        return triton_flash.unsupported_case(case)

    def prepare(inputs: AttentionInputs, fp32_precision: str = "tf32"
                ) -> Callable[[], torch.Tensor]:
        from flashbench.kernels import triton_flash

        return triton_flash.prepare(inputs, fp32_precision=fp32_precision)

    def resolve(inputs: AttentionInputs) -> str:
        from flashbench.kernels import triton_flash

        return triton_flash.kernel_name(inputs)

    return Backend(spec, prepare, unavailable, unsupported, resolve=resolve)


# SDPA takes a boolean mask (a window, a padded ragged batch) everywhere but in its flash
# backend, and has no hook for a softcap: tanh of the scores is no additive mask.
_SDPA_FEATURES = ("window", "ragged", "paged")


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

    def unsupported(case: Case) -> str | None:
        if name == "sdpa-flash" and (case.window is not None or case.ragged is not None):
            return ("sdpa-flash takes no explicit mask, so neither a sliding window nor a "
                    "padded ragged batch")
        reason = _causal_supported(case) or missing_features(case, _SDPA_FEATURES, "SDPA")
        if reason and case.softcap is not None:
            reason += " (it has no hook on the scores, and tanh is no additive mask)"
        return reason

    # kernels.sdpa imports torch._dynamo (two seconds): only a sweep that runs SDPA pays for it.
    def prepare(inputs: AttentionInputs) -> Callable[[], torch.Tensor]:
        from flashbench.kernels import sdpa

        return sdpa.prepare(name, inputs)

    def resolve(inputs: AttentionInputs) -> str:
        from flashbench.kernels import sdpa

        return sdpa.resolve(name, inputs)

    return Backend(spec, prepare, unavailable, unsupported, resolve=resolve)


def _naive(spec: BackendSpec) -> Backend:
    from flashbench.kernels import naive

    return Backend(spec, naive.prepare, _never, _causal_supported)


# Families whose kernel module says for itself, once imported, whether it can run here
# (unavailable), what it refuses beyond its declared features (unsupported), how it prepares
# and what ran (resolve); imported only when asked, since flash-attn and flashinfer are
# optional packages.
_KERNEL_MODULES = {"flex": "flashbench.kernels.flex",
                   "flash-attn": "flashbench.kernels.flash_attn_lib",
                   "flashinfer": "flashbench.kernels.flashinfer_lib"}


def _kernel_module(spec: BackendSpec) -> Backend:
    def kernel():
        return importlib.import_module(_KERNEL_MODULES[spec.family])

    def unsupported(case: Case) -> str | None:
        return _causal_supported(case) or missing_features(case, spec.features, spec.name) \
            or kernel().unsupported(case)

    return Backend(spec, lambda inputs: kernel().prepare(inputs),
                   lambda device: kernel().unavailable(device), unsupported,
                   resolve=lambda inputs: kernel().resolve(inputs))


def _plugin(spec: BackendSpec) -> Backend:
    call = spec.call
    assert call is not None

    def prepare(inputs: AttentionInputs) -> Callable[[], torch.Tensor]:
        kwargs = {"causal": inputs.causal, "scale": inputs.scale} | _feature_arguments(inputs)
        if spec.prepares:
            return call(*inputs.tensors, **kwargs)
        return lambda: call(*inputs.tensors, **kwargs)

    own = spec.unsupported

    def unsupported(case: Case) -> str | None:
        return _causal_supported(case) \
            or missing_features(case, spec.features, f"plugin {spec.name}") \
            or (own(case) if own is not None else None)

    def resolve(inputs: AttentionInputs) -> str:
        assert spec.resolve is not None
        return spec.resolve(*inputs.tensors, causal=inputs.causal)

    return Backend(spec, prepare, _never, unsupported,
                   resolve=resolve if spec.resolve is not None else None)


def _feature_arguments(inputs: AttentionInputs) -> dict:
    """The keyword arguments a plugin gets for the features a case uses (and declared):
    ``window``, ``softcap``; a ragged batch's ``cu_seqlens`` and ``max_seqlen``; a paged
    cache's ``block_table`` and ``cache_seqlens``. A dense case passes none of them, so a
    plugin written for dense attention keeps working."""
    extra: dict = {}
    if inputs.window is not None:
        extra["window"] = inputs.window
    if inputs.softcap is not None:
        extra["softcap"] = inputs.softcap
    if inputs.layout == "ragged":
        extra |= {"cu_seqlens": inputs.cu_seqlens, "max_seqlen": inputs.max_seqlen}
    if inputs.layout == "paged":
        extra |= {"block_table": inputs.block_table, "cache_seqlens": inputs.cache_seqlens}
    return extra


_BY_FAMILY = {"triton": _triton, "sdpa": _sdpa, "naive": _naive, "plugin": _plugin,
              "flex": _kernel_module, "flash-attn": _kernel_module, "flashinfer": _kernel_module}
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
