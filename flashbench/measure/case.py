"""One case up to its timing: inputs, the backend prepared, the checked first call and its peak memory.

``prepare_case`` is a function of the case and the settings alone (it makes its own inputs), so
it can run in this process or in a worker unchanged; every failure becomes the row's status.
flashbench.measure.group times what it prepared (alone, or alternating with the other
backends of the shape) and finishes the rows with ``finish_row``.
"""

from __future__ import annotations

import gc
import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch

from flashbench.core import costs
from flashbench.core.cases import Case, Mode, Status
from flashbench.core.config import TimingPolicy
from flashbench.core.errors import one_line
from flashbench.core.roofline import roofline_fields
from flashbench.core.rows import blank_row
from flashbench.core.stats import summarize
from flashbench.measure.backends import Backend, get_backend, torch_dtype
from flashbench.measure.precision import ieee_matmuls, matmul_precision
from flashbench.measure.inputs import AttentionInputs, make_inputs
from flashbench.measure.reference import (REFERENCE_CHUNK_BYTES, errors,
                                          reference_input_gradients, reference_output, tolerance)
from flashbench.measure.telemetry import memory_used_bytes

__all__ = ["Prepared", "Refused", "case_call", "fail", "finish_row", "make_inputs", "mode_call",
           "prepare_case", "release"]

# SDPA refuses a forced backend with these words; the warnings it raised just before say why.
_SDPA_REFUSALS = ("No available kernel", "No viable backend")


# How an allocation that failed reads when it is no torch.OutOfMemoryError: the CPU allocator
# raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory: you tried to
# allocate ...", "... not enough memory: ..."), as do some CUDA libraries ("out of memory").
_OOM_WORDS = ("can't allocate memory", "not enough memory", "out of memory")


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation that failed: an answer about the case (``oom``), not a
    failure of the backend (``error``)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(w in str(e).lower() for w in _OOM_WORDS)


class Refused(Exception):
    """The backend declined the case when called (SDPA's 'No available kernel')."""


@dataclass
class Prepared:
    """A case ready to be timed: its row so far (checked, memory measured) and its call; with
    ``--timer graph`` on a cold L2, one call per copy of the inputs (flashbench.measure.graph_timer)."""

    case: Case
    row: dict[str, Any]
    calls: list[Callable[[], Any]]


def prepare_case(case: Case, device: torch.device, policy: TimingPolicy,
                 nvml_handle: Any | None = None, fp32_precision: str = "tf32"
                 ) -> tuple[dict[str, Any], Prepared | None]:
    """A case up to its timing: the row, and what to time (None when the row is final: the
    backend refused, ran out of memory or failed; its status says which). ``fp32_precision``
    (the config's) is how our kernels multiply fp32 inputs."""
    row = blank_row(case, str(device), policy.l2)
    backend = get_backend(case.backend)
    reason = backend.unavailable(device) or backend.unsupported(case)
    if reason:
        return row | {"status": Status.UNSUPPORTED, "error": reason}, None
    reason = _predicted_oom(case, device)
    if reason:
        return row | {"status": Status.OOM, "error": reason}, None
    _release(device)
    try:
        calls = _prepare_into(row, case, backend, device, policy, nvml_handle,
                              fp32_precision)
    except Exception as e:  # any failure is this case's status; the sweep goes on
        fail(row, e)
        _release(device)
        return row, None
    return row, Prepared(case, row, calls)


def fail(row: dict[str, Any], e: BaseException) -> None:
    """``e`` as the row's status: unsupported (refused), oom, or error."""
    if isinstance(e, Refused):
        row.update(status=Status.UNSUPPORTED, error=str(e))
    elif _out_of_memory(e):
        row.update(status=Status.OOM, error=one_line(e, 300))
    else:
        row.update(status=Status.ERROR, error=one_line(e))


def release(device: torch.device) -> None:
    """Free what the cases just measured left cached."""
    _release(device)


def case_call(case: Case, device: torch.device) -> Callable[[], Any]:
    """The call a sweep times for ``case``, on the same inputs, prepared (tuned, compiled) and
    ready: what ``flashbench profile`` runs under a profiler."""
    backend = get_backend(case.backend)
    reason = backend.unavailable(device) or backend.unsupported(case)
    if reason:
        raise Refused(reason)
    inputs = make_inputs(case, device)
    run = _prepared_call(case, backend, inputs,
                         None if case.mode is Mode.FWD else _grad_output(case, inputs.q))
    _first_call(run, case.backend)  # a refusal is raised here, as in a sweep
    return run


def mode_call(fn, mode: Mode, inputs: tuple[torch.Tensor, ...], dout: torch.Tensor | None):
    """The timed call of a mode: the forward; forward and backward; or the backward alone,
    replayed from one saved forward graph (retain_graph), so its samples hold no forward."""
    if mode is Mode.FWD:
        return fn
    if mode is Mode.FWD_BWD:
        return lambda: torch.autograd.grad(fn(), inputs, dout)
    out = fn()
    return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _predicted_oom(case: Case, device: torch.device) -> str | None:
    """Refuse a materializing backend whose S and P cannot fit, without trying it."""
    need = costs.materialized_peak_bytes(case)
    if need == 0:
        return None
    # Beside it: the inputs, and the reference's output and working chunk (see reference.py).
    e = torch_dtype(case.dtype).itemsize
    inputs = e * case.head_dim * case.batch * (2 * case.heads * case.seq_len
                                               + 2 * case.kv_heads * case.kv_len)
    need += inputs + 4 * case.batch * case.heads * case.seq_len * case.head_dim
    need += 2 * REFERENCE_CHUNK_BYTES  # its scores and their softmax
    free = _free_bytes(device)
    if need > 0.9 * free:
        return (f"not attempted: the materialized score matrices need {need / 2**30:.1f} GiB, "
                f"{free / 2**30:.1f} GiB free")
    return None


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _grad_output(case: Case, q: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(device=q.device).manual_seed(case.seed + 1)
    return torch.randn(q.shape, generator=gen, device=q.device, dtype=q.dtype)


def _prepared_call(case: Case, backend: Backend, inputs: AttentionInputs,
                   dout: torch.Tensor | None, fp32_precision: str = "tf32") -> Callable[[], Any]:
    """The backend prepared for the inputs (may tune and compile), as the mode's call."""
    if dout is not None:
        for t in inputs.tensors:
            t.requires_grad_()
    # Only a backend that follows the sweep's setting (ours) takes it; plugins never see it.
    extra = {"fp32_precision": fp32_precision} if backend.spec.fp32_matmul == "sweep" else {}
    fn = backend.prepare(inputs, **extra)
    return mode_call(fn, case.mode, inputs.tensors, dout)


def _first_call(fn, backend_name: str) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn()
        except RuntimeError as e:
            if any(word in str(e) for word in _SDPA_REFUSALS):
                reasons = [" ".join(str(w.message).split()) for w in caught]
                detail = "; ".join(dict.fromkeys(r for r in reasons if r)) or str(e).split(".")[0]
                raise Refused(f"{backend_name} refused: {detail}"[:500]) from None
            raise


def _references(inputs: AttentionInputs, dout: torch.Tensor | None
                ) -> tuple[torch.Tensor, ...]:
    """What the case's result is checked against: the output, or (backward modes) the
    gradients; float32 on a GPU, float64 on a CPU."""
    cuda = inputs.q.device.type == "cuda"
    dtype = torch.float32 if cuda else torch.float64
    # A float32 reference in TF32 (a program that turned it on) would be no reference.
    with ieee_matmuls() if cuda else nullcontext():
        if dout is None:
            return (reference_output(inputs, dtype),)
        # Gradients are checked; the forward's output is checked by the fwd mode.
        return reference_input_gradients(inputs, dout, dtype)


def _first_call_with_memory(row: dict[str, Any], run: Callable[[], Any], case: Case,
                            device: torch.device, nvml_handle: Any | None) -> Any:
    """The first (checked) call, and its peak memory beyond what is resident (inputs, the
    reference, and for bwd the saved forward state) into ``row``."""
    if device.type != "cuda":
        return _first_call(run, case.backend)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base_alloc = torch.cuda.memory_allocated(device)
    base_reserved = torch.cuda.memory_reserved(device)
    base_nvml = memory_used_bytes(nvml_handle)
    result = _first_call(run, case.backend)
    torch.cuda.synchronize(device)
    row["peak_alloc_bytes"] = torch.cuda.max_memory_allocated(device) - base_alloc
    row["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device) - base_reserved
    used = memory_used_bytes(nvml_handle)
    # The caching allocator keeps what the call reserved, so NVML still sees it afterwards.
    if used is not None and base_nvml is not None:
        row["nvml_used_bytes"] = used - base_nvml
    return result


def _worst_errors(results: tuple[torch.Tensor, ...], refs: tuple[torch.Tensor, ...]
                  ) -> tuple[float, float]:
    pairs = [errors(r, ref) for r, ref in zip(results, refs)]
    if any(math.isnan(rel) for _, rel in pairs):
        return float("nan"), float("nan")
    return max(a for a, _ in pairs), max(rel for _, rel in pairs)


def _prepare_into(row: dict[str, Any], case: Case, backend: Backend, device: torch.device,
                  policy: TimingPolicy, nvml_handle: Any | None, fp32_precision: str
                  ) -> list[Callable[[], Any]]:
    inputs = make_inputs(case, device)
    dout = None if case.mode is Mode.FWD else _grad_output(case, inputs.q)
    refs = _references(inputs, dout)
    # Preparing may autotune and compile (our Triton kernel): timed apart from the samples.
    started = time.perf_counter()
    run = _prepared_call(case, backend, inputs, dout, fp32_precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    row["setup_ms"] = (time.perf_counter() - started) * 1e3
    result = _first_call_with_memory(row, run, case, device, nvml_handle)
    row["resolved_backend"] = backend.resolve(inputs) \
        if backend.resolve is not None else case.backend
    # torch's TF32 flags as they are now, while the case runs.
    row["matmul_precision"] = matmul_precision(backend.spec, case.dtype, device,
                                               row["resolved_backend"], fp32_precision)
    max_abs, rel = _worst_errors((result,) if case.mode is Mode.FWD else tuple(result), refs)
    row.update(max_abs_err=max_abs, rel_err=rel)
    allowed = tolerance(case.dtype, row["matmul_precision"])
    if rel <= allowed:  # False for NaN as well
        row.update(status=Status.OK)
    else:
        how = f" ({row['matmul_precision']} products)" if row["matmul_precision"] else ""
        row.update(status=Status.MISMATCH,
                   error=f"relative error {rel:.3g} above the {case.dtype}{how} tolerance "
                         f"{allowed:g}")
    del result, refs
    calls = [run]
    for copy in range(1, _input_copies(case, device, policy, (*inputs.tensors, dout))):
        calls.append(_copy_call(case, backend, device, copy, fp32_precision))
    return calls


# A cold L2 under --timer graph: enough copies of the inputs to be twice the L2, at most these.
MAX_INPUT_COPIES = 32


def _input_copies(case: Case, device: torch.device, policy: TimingPolicy,
                  tensors: tuple[torch.Tensor | None, ...]) -> int:
    """How many input sets the graph timer cycles through (1 for every other timer)."""
    if policy.timer != "graph" or policy.l2 != "cold" or device.type != "cuda":
        return 1
    from flashbench.measure.timing import l2_bytes

    nbytes = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    return max(1, min(MAX_INPUT_COPIES, math.ceil(2 * l2_bytes(device) / max(nbytes, 1))))


def _copy_call(case: Case, backend: Backend, device: torch.device, copy: int,
               fp32_precision: str) -> Callable[[], Any]:
    """The case's call on a fresh copy of its inputs (other values: nothing to share a cache)."""
    inputs = make_inputs(case, device, seed=case.seed + 7919 * copy)
    run = _prepared_call(case, backend, inputs,
                         None if case.mode is Mode.FWD else _grad_output(case, inputs.q),
                         fp32_precision)
    run()
    return run


def finish_row(row: dict[str, Any], samples: list[float], timer: str,
               rounds: list[int] | None, telemetry: dict[str, Any],
               ceilings: dict[str, Any] | None) -> None:
    """The timing, rates, telemetry and shares of peak of a row whose samples are in."""
    stats = summarize(samples)
    row.update(telemetry)
    row.update(stats.to_row(), samples_ms=samples, sample_rounds=rounds, timer=timer)
    seconds = stats.median_ms / 1e3
    row["tflops"] = row["flops"] / seconds / 1e12 if seconds > 0 else None
    if row.get("tokens") is not None and seconds > 0:
        row["tokens_per_s"] = row["tokens"] / seconds
    if row["hbm_bytes"] is not None and seconds > 0:
        row["gbps"] = row["hbm_bytes"] / seconds / 1e9
    row.update(roofline_fields(row, ceilings))
