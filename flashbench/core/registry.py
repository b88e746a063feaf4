"""Every backend flashbench knows, built-in or plugin, declared once as a small frozen record.

A record says what the rest of flashbench needs to know without importing torch: the name, a
family, a description, which traffic model its bytes follow, whether it is a candidate for
``compare``'s default baseline, and which module the worker should import before the first
case. Built-ins are declared in ``_BUILTINS`` below; their implementations are in
flashbench.measure.backends. Plugins register through ``register_backend`` and bring their
own callables::

    @flashbench.register_backend("my-attention")
    def my_attention(q, k, v, *, causal: bool, scale: float):
        ...  # q: (batch, heads, seq, head_dim); k, v: (batch, kv_heads, kv_len, head_dim)

A plugin may also give ``unsupported(case) -> reason | None``, ``resolve(q, k, v, *, causal)
-> name``, ``baseline=True`` and ``fp32_matmul`` (how it multiplies fp32 inputs), or register a *prepare* function (``prepare=True``) that takes
the same arguments and returns the zero-argument call to time, so that its set-up (compiling,
tuning) stays outside every sample.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from flashbench.core.cases import FEATURES, Case

__all__ = ["FP32_MATMULS", "Algorithm", "BackendSpec", "Family", "Fp32Matmul", "algorithm_of",
           "backends", "baseline_names", "builtin_names", "names", "plugin_specs",
           "register_backend", "restore_plugins"]

Family = Literal["triton", "sdpa", "naive", "flex", "flash-attn", "flashinfer",
                 "plugin"]
Algorithm = Literal["flash", "naive", "math"]  # traffic models, flashbench.core.costs
# How a backend multiplies fp32 inputs on a GPU, which decides a row's matmul_precision
# (flashbench.measure.backends.matmul_precision). "ieee" and "tf32": always so; "sweep": as
# the config's fp32_precision says (our kernels); "torch": as torch's cuBLAS setting says
# (torch.backends.cuda.matmul) when the row is measured; "cudnn": as torch's cuDNN setting
# says; "resolved": as the backend SDPA's dispatch picked. On a CPU, torch multiplies in IEEE.
Fp32Matmul = Literal["ieee", "tf32", "sweep", "torch", "cudnn", "resolved"]
FP32_MATMULS: tuple[str, ...] = ("ieee", "tf32", "torch")  # what a plugin may declare
F = TypeVar("F", bound=Callable[..., Any])

# Names travel through comma-separated flags, table headers and file names.
_VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


@dataclass(frozen=True, slots=True)
class BackendSpec:
    name: str
    family: Family
    description: str
    algorithm: Algorithm = "flash"  # the traffic model its hbm_bytes follow (flashbench.core.costs)
    baseline: bool = False  # compare's default baseline is the fastest of these, per case
    preload: str | None = None  # imported by the worker at start-up, so that the first case's
    #                             timeout is about the case, not about importing torch._dynamo
    source: str = "built-in"  # the file or module that registered it, for messages
    # A plugin's callables (built-ins have theirs in flashbench.measure.backends).
    call: Callable[..., Any] | None = None  # forward, or with ``prepares`` a prepare function
    prepares: bool = False
    unsupported: Callable[[Case], str | None] | None = None
    resolve: Callable[..., str] | None = None
    fp32_matmul: Fp32Matmul | None = None  # None: not declared (a plugin's rows say null)
    # What it implements beyond dense attention (flashbench.core.cases.FEATURES): a plugin or
    # a built-in of the flex, flash-attn and flashinfer families is never given a case that
    # needs another (a plugin gets each one's arguments by keyword).
    features: tuple[str, ...] = ()


_SDPA = "flashbench.kernels.sdpa"  # imports torch._dynamo: seconds
_ALL_FEATURES = FEATURES
# fp32 on a GPU: FlashAttention-2 has no fp32 kernel (SDPA refuses, and on a CPU its flash
# path is torch's own IEEE code); the memory-efficient kernel's CUTLASS GEMMs run fp32 as
# 3xTF32 from sm_80 on (OpMultiplyAddFastF32, fp32-accurate) and as SIMT FMAs before, whatever
# torch's TF32 flags say; the math backend and naive are cuBLAS matmuls.
_BUILTINS: tuple[BackendSpec, ...] = (
    BackendSpec("triton", "triton", "flashbench's Triton FlashAttention-2 kernels",
                preload="flashbench.kernels.triton_flash", fp32_matmul="sweep"),
    BackendSpec("sdpa", "sdpa", "PyTorch SDPA, its own choice of backend", baseline=True,
                preload=_SDPA, fp32_matmul="resolved"),
    BackendSpec("sdpa-flash", "sdpa", "PyTorch SDPA forced to its FlashAttention-2 backend",
                baseline=True, preload=_SDPA, fp32_matmul="ieee"),
    BackendSpec("sdpa-efficient", "sdpa",
                "PyTorch SDPA forced to its memory-efficient (xformers) backend", baseline=True,
                preload=_SDPA, fp32_matmul="ieee"),
    BackendSpec("sdpa-cudnn", "sdpa", "PyTorch SDPA forced to its cuDNN backend", baseline=True,
                preload=_SDPA, fp32_matmul="cudnn"),
    BackendSpec("sdpa-math", "sdpa", "PyTorch SDPA forced to its math (materialized) backend",
                algorithm="math", baseline=True, preload=_SDPA, fp32_matmul="torch"),
    BackendSpec("naive", "naive", "materialized S and P, softmax in fp32", algorithm="naive",
                fp32_matmul="torch"),
    # Compiled to a fused Triton kernel on CUDA, whose fp32 products follow torch's cuBLAS
    # setting when it is compiled (flashbench.kernels.flex); eager and unfused on a CPU.
    BackendSpec("flex", "flex", "PyTorch FlexAttention (compiled on CUDA, eager on a CPU)",
                preload="torch._dynamo", fp32_matmul="torch", features=_ALL_FEATURES),
    # Optional packages, available only where they import (neither has an fp32 kernel).
    BackendSpec("flash-attn", "flash-attn", "Tri Dao's flash-attn package (FlashAttention-2)",
                features=_ALL_FEATURES),
    BackendSpec("flashinfer", "flashinfer",
                "FlashInfer's batch decode wrapper over a paged KV cache",
                features=("window", "softcap", "paged")),
)
_BUILTIN_BY_NAME = {b.name: b for b in _BUILTINS}
_PLUGINS: dict[str, BackendSpec] = {}


def _source_of(fn: Callable[..., Any]) -> str:
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    return str(getattr(module, "__file__", None) or getattr(fn, "__module__", "?"))


def register_backend(name: str, *, description: str | None = None, baseline: bool = False,
                     prepare: bool = False, unsupported: Callable[[Case], str | None] | None = None,
                     resolve: Callable[..., str] | None = None,
                     fp32_matmul: str | None = None,
                     features: tuple[str, ...] | list[str] = ()) -> Callable[[F], F]:
    """Register the decorated function as backend ``name``; it then runs like a built-in one.

    The function is ``fn(q, k, v, *, causal, scale) -> out``, or with ``prepare=True`` a
    function of the same arguments returning the zero-argument call to time. ``description``
    defaults to the first line of its docstring. ``fp32_matmul`` says how it multiplies fp32
    inputs, for its rows' ``matmul_precision``: "ieee", "tf32", or "torch" (torch matmuls,
    which follow torch's TF32 setting); None leaves the field null. ``features`` names what
    it implements beyond dense attention, any of "window", "softcap", "ragged", "paged": a
    case that uses one gets its arguments by keyword (``window=``, ``softcap=``;
    ``cu_seqlens=`` and ``max_seqlen=`` with q, k, v packed as (tokens, heads, D);
    ``block_table=`` and ``cache_seqlens=`` with k, v a pool of pages (pages, page_size,
    kv_heads, D)); a case that needs one it did not name is ``unsupported``.
    """
    if not isinstance(name, str) or not _VALID_NAME.match(name):
        raise ValueError(f"backend name {name!r} must be 1-64 letters, digits or . _ + - "
                         f"(starting with a letter or digit)")
    if name in _BUILTIN_BY_NAME:
        raise ValueError(f"backend name {name!r} is a built-in backend; choose another")
    if fp32_matmul is not None and fp32_matmul not in FP32_MATMULS:
        raise ValueError(f"register_backend({name!r}): fp32_matmul {fp32_matmul!r} is not one "
                         f"of {', '.join(FP32_MATMULS)} (or None)")

    unknown = [f for f in features if f not in FEATURES] if not isinstance(features, str) \
        else [features]
    if unknown:
        raise ValueError(f"register_backend({name!r}): unknown feature {unknown[0]!r}; "
                         f"features are {', '.join(FEATURES)}")

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"register_backend({name!r}) decorates a function, got {fn!r}")
        source = _source_of(fn)
        known = _PLUGINS.get(name)
        # The same file loaded again (a resumed run, a test) may re-register its own names.
        if known is not None and known.source != source:
            raise ValueError(f"backend {name!r} is already registered by {known.source}")
        doc = (fn.__doc__ or "").strip().splitlines()
        text = description or (doc[0] if doc else f"plugin from {Path(source).name}")
        _PLUGINS[name] = BackendSpec(name, "plugin", text, baseline=baseline, source=source,
                                     call=fn, prepares=prepare, unsupported=unsupported,
                                     resolve=resolve, fp32_matmul=fp32_matmul,  # type: ignore[arg-type]
                                     features=tuple(features))
        return fn

    return decorate


def plugin_specs() -> dict[str, BackendSpec]:
    """The plugin backends registered in this process so far, by name."""
    return dict(_PLUGINS)


def restore_plugins(snapshot: dict[str, BackendSpec]) -> None:
    """Put the plugin registrations back as ``plugin_specs()`` returned them (a failed import)."""
    _PLUGINS.clear()
    _PLUGINS.update(snapshot)


def backends() -> dict[str, BackendSpec]:
    """Built-in backends, then plugin backends, by name."""
    return _BUILTIN_BY_NAME | _PLUGINS


def builtin_names() -> tuple[str, ...]:
    return tuple(_BUILTIN_BY_NAME)


def names() -> tuple[str, ...]:
    return tuple(backends())


def baseline_names() -> frozenset[str]:
    """The backends compare's default baseline is chosen among."""
    return frozenset(n for n, b in backends().items() if b.baseline)


def algorithm_of(backend: str) -> Algorithm:
    """Which traffic model a backend's bytes follow; a fused kernel's for one not known here."""
    spec = backends().get(backend)
    return spec.algorithm if spec is not None else "flash"
