"""Measure one case: inputs, correctness, peak memory, timing and telemetry, into one result row.

``measure_case`` is a function of the case and the settings alone (it makes its own inputs), so
it can run in this process or in a worker unchanged. Every failure becomes the row's status.
"""

from __future__ import annotations

import gc
import math
import os
import time
import warnings
from typing import Any, Callable

import torch

from flashbench.core import costs
from flashbench.measure.backends import get_backend, torch_dtype
from flashbench.core.cases import Case, Mode, Status
from flashbench.measure.reference import (REFERENCE_CHUNK_BYTES, TOLERANCE, errors, reference_attention,
                                  reference_gradients)
from flashbench.core.roofline import ROOFLINE_FIELDS, roofline_fields
from flashbench.measure.telemetry import TELEMETRY_FIELDS, TelemetrySampler, memory_used_bytes
from flashbench.measure.timing import TimingPolicy, time_callable

__all__ = ["RESULT_FIELDS", "Refused", "blank_row", "case_call", "make_inputs", "measure_case",
           "mode_call", "one_line", "select_device"]

RESULT_FIELDS: tuple[str, ...] = (
    "status", "error", "resolved_backend", "device", "timer", "l2", "samples_ms",
    "median_ms", "mean_ms", "std_ms", "min_ms", "p20_ms", "p80_ms", "n_samples",
    "flops", "tflops", "hbm_bytes", "gbps", *ROOFLINE_FIELDS,
    "peak_alloc_bytes", "peak_reserved_bytes", "nvml_used_bytes",
    "max_abs_err", "rel_err", "setup_ms",
    *TELEMETRY_FIELDS,
)

# SDPA refuses a forced backend with these words; the warnings it raised just before say why.
_SDPA_REFUSALS = ("No available kernel", "No viable backend")


def select_device(name: str) -> torch.device:
    """'auto' -> cuda when present, else cpu. On a CPU, Triton runs under its interpreter."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from flashbench.core.errors import UserError

        raise UserError("device: cuda was asked for but no CUDA device is visible "
                        "(use --device cpu or --config cpu)")
    if name == "cpu":
        # Must precede the first import of triton, which decides at import time.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return torch.device(name, torch.cuda.current_device()) if name == "cuda" else torch.device(name)


def blank_row(case: Case, device: torch.device, policy: TimingPolicy) -> dict[str, Any]:
    row: dict[str, Any] = case.to_dict() | dict.fromkeys(RESULT_FIELDS)
    row.update(device=str(device), l2=policy.l2, samples_ms=[],
               timer="cuda-events" if device.type == "cuda" else "perf-counter",
               flops=costs.flops(case),
               hbm_bytes=costs.hbm_bytes(case, costs.algorithm_of(case.backend)))
    row.update(roofline_fields(row, None))
    return row


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500]


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    pages = os.sysconf("SC_AVPHYS_PAGES")
    return pages * os.sysconf("SC_PAGE_SIZE")


def _input_bytes(case: Case) -> int:
    e = torch_dtype(case.dtype).itemsize
    return e * case.head_dim * case.batch * (2 * case.heads * case.seq_len
                                             + 2 * case.kv_heads * case.kv_len)


def _predicted_oom(case: Case, device: torch.device) -> str | None:
    """Refuse a materializing backend whose S and P cannot fit, without trying it."""
    need = costs.materialized_peak_bytes(case, costs.algorithm_of(case.backend))
    if need == 0:
        return None
    # Beside it: the inputs, and the reference's output and working chunk (see reference.py).
    need += _input_bytes(case) + 4 * case.batch * case.heads * case.seq_len * case.head_dim
    need += 2 * REFERENCE_CHUNK_BYTES  # its scores and their softmax
    free = _free_bytes(device)
    if need > 0.9 * free:
        return (f"not attempted: the materialized score matrices need {need / 2**30:.1f} GiB, "
                f"{free / 2**30:.1f} GiB free")
    return None


def make_inputs(case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random normal Q, K, V drawn afresh per case from the case's own seed."""
    gen = torch.Generator(device=device).manual_seed(case.seed)
    dtype = torch_dtype(case.dtype)

    def randn(heads: int, length: int) -> torch.Tensor:
        return torch.randn(case.batch, heads, length, case.head_dim, generator=gen,
                           device=device, dtype=dtype)

    return randn(case.heads, case.seq_len), randn(case.kv_heads, case.kv_len), \
        randn(case.kv_heads, case.kv_len)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_case(case: Case, device: torch.device, policy: TimingPolicy,
                 nvml_handle: Any | None = None,
                 ceilings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one case end to end; always returns a row, whatever happened.

    ``ceilings`` (flashbench.measure.calibrate's record for this device) adds the shares of peak."""
    row = blank_row(case, device, policy)
    backend = get_backend(case.backend)
    reason = backend.unavailable(device) or backend.unsupported(case)
    if reason:
        return row | {"status": Status.UNSUPPORTED.value, "error": reason}
    reason = _predicted_oom(case, device)
    if reason:
        return row | {"status": Status.OOM.value, "error": reason}
    _release(device)
    try:
        _measure_into(row, case, backend, device, policy, nvml_handle)
        row.update(roofline_fields(row, ceilings))
    except torch.OutOfMemoryError as e:
        row.update(status=Status.OOM.value, error=one_line(e)[:300])
    except Refused as e:
        row.update(status=Status.UNSUPPORTED.value, error=str(e))
    except Exception as e:  # any other failure is this case's status; the sweep goes on
        row.update(status=Status.ERROR.value, error=one_line(e))
    finally:
        _release(device)
    return row


def _grad_output(case: Case, q: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(device=q.device).manual_seed(case.seed + 1)
    return torch.randn(q.shape, generator=gen, device=q.device, dtype=q.dtype)


def case_call(case: Case, device: torch.device) -> Callable[[], Any]:
    """The call a sweep times for ``case``, on the same inputs, prepared (tuned, compiled) and
    ready: what ``flashbench profile`` runs under a profiler."""
    backend = get_backend(case.backend)
    reason = backend.unavailable(device) or backend.unsupported(case)
    if reason:
        raise Refused(reason)
    q, k, v = make_inputs(case, device)
    run = _prepared_call(case, backend, q, k, v,
                         None if case.mode is Mode.FWD else _grad_output(case, q))
    _first_call(run, case.backend)  # a refusal is raised here, as in a sweep
    return run


def _prepared_call(case: Case, backend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   dout: torch.Tensor | None) -> Callable[[], Any]:
    """The backend prepared for the inputs (may tune and compile), as the mode's call."""
    if dout is not None:
        for t in (q, k, v):
            t.requires_grad_()
    fn = backend.prepare(q, k, v, causal=case.causal, scale=1.0 / math.sqrt(case.head_dim))
    return mode_call(fn, case.mode, (q, k, v), dout)


class Refused(Exception):
    """The backend declined the case when called (SDPA's 'No available kernel')."""


def _first_call(fn, backend_name: str) -> torch.Tensor:
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


def mode_call(fn, mode: Mode, inputs: tuple[torch.Tensor, ...], dout: torch.Tensor | None):
    """The timed call of a mode: the forward; forward and backward; or the backward alone,
    replayed from one saved forward graph (retain_graph), so its samples hold no forward."""
    if mode is Mode.FWD:
        return fn
    if mode is Mode.FWD_BWD:
        return lambda: torch.autograd.grad(fn(), inputs, dout)
    out = fn()
    return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)


def _worst_errors(results: tuple[torch.Tensor, ...], refs: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    pairs = [errors(r, ref) for r, ref in zip(results, refs)]
    if any(math.isnan(rel) for _, rel in pairs):
        return float("nan"), float("nan")
    return max(a for a, _ in pairs), max(rel for _, rel in pairs)


def _measure_into(row: dict[str, Any], case: Case, backend, device: torch.device,
                  policy: TimingPolicy, nvml_handle: Any | None) -> None:
    q, k, v = make_inputs(case, device)
    scale = 1.0 / math.sqrt(case.head_dim)
    ref_dtype = torch.float32 if device.type == "cuda" else torch.float64
    dout = None
    if case.mode is Mode.FWD:
        refs: tuple[torch.Tensor, ...] = (
            reference_attention(q, k, v, causal=case.causal, scale=scale, dtype=ref_dtype),)
    else:
        dout = _grad_output(case, q)
        # Gradients are checked, the forward's output is checked by the fwd mode.
        refs = reference_gradients(q, k, v, dout, causal=case.causal, scale=scale,
                                   dtype=ref_dtype)[1:]
    # Preparing may autotune and compile (our Triton kernel): timed apart from the samples.
    started = time.perf_counter()
    run = _prepared_call(case, backend, q, k, v, dout)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    row["setup_ms"] = (time.perf_counter() - started) * 1e3

    # Peak memory of one call beyond what is resident: inputs, the reference, and for bwd the
    # saved forward state.
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
        base_reserved = torch.cuda.memory_reserved(device)
        base_nvml = memory_used_bytes(nvml_handle)
    result = _first_call(run, case.backend)
    if cuda:
        torch.cuda.synchronize(device)
        row["peak_alloc_bytes"] = torch.cuda.max_memory_allocated(device) - base_alloc
        row["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device) - base_reserved
        used = memory_used_bytes(nvml_handle)
        # The caching allocator keeps what the call reserved, so NVML still sees it afterwards.
        if used is not None and base_nvml is not None:
            row["nvml_used_bytes"] = used - base_nvml

    if backend.resolve is not None:
        row["resolved_backend"] = backend.resolve(q, k, v, causal=case.causal)
    else:
        row["resolved_backend"] = case.backend

    results = (result,) if case.mode is Mode.FWD else tuple(result)
    max_abs, rel = _worst_errors(results, refs)
    row.update(max_abs_err=max_abs, rel_err=rel)
    ok = rel <= TOLERANCE[case.dtype]  # False for NaN as well
    del result, results, refs

    with TelemetrySampler(nvml_handle) as sampler:
        samples, timer = time_callable(run, device, policy)
    row.update(sampler.summary())
    _fill_timing(row, samples, timer)
    if ok:
        row.update(status=Status.OK.value)
    else:
        row.update(status=Status.MISMATCH.value,
                   error=f"relative error {rel:.3g} above the {case.dtype} tolerance "
                         f"{TOLERANCE[case.dtype]:g}")


def _fill_timing(row: dict[str, Any], samples: list[float], timer: str) -> None:
    from flashbench.core.stats import summarize

    stats = summarize(samples)
    row.update(stats.to_row(), samples_ms=samples, timer=timer)
    seconds = stats.median_ms / 1e3
    row["tflops"] = row["flops"] / seconds / 1e12 if seconds > 0 else None
    if row["hbm_bytes"] is not None and seconds > 0:
        row["gbps"] = row["hbm_bytes"] / seconds / 1e9
