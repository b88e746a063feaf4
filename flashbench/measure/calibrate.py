"""This machine's own ceilings: dense matmul rate per dtype and device-memory copy bandwidth.

Measured here, never looked up: no peak figure of any GPU is written in this project. The
matmul ceiling of a dtype is the best median rate of square products at a few sizes (large
enough to fill the card, so the best is the one least hurt by wave quantization); the copy
ceiling is a large device-to-device copy counting the bytes read and the bytes written. Both
are cached in the user's cache folder (``ceilings.json``) under a key of GPU UUID, driver and
torch version, since each of those changes what a kernel can reach; a run on the same machine
then reports every case as a share of them (see flashbench.core.roofline).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from flashbench.core.errors import UserError
from flashbench.core.stats import summarize
from flashbench.core.config import TimingPolicy
from flashbench.measure.rounds import time_callable
from flashbench.core.cache import cache_dir, load_entries, store_entry

__all__ = ["CEILING_DTYPES", "CalibrationPlan", "cached_ceilings", "calibrate", "calibration_key",
           "calibration_steps", "ceilings_path", "load_ceilings", "measure_copy_gbps",
           "measure_matmul_tflops", "parse_dtypes", "save_ceilings", "skipped_dtypes"]

# tf32 is fp32 inputs on tensor cores (torch's "high" float32 matmul precision); fp32 is IEEE.
CEILING_DTYPES = ("bf16", "fp16", "tf32", "fp32")


@dataclass(frozen=True, slots=True)
class CalibrationPlan:
    """Sizes and timing of a calibration; the defaults depend on the device (``for_device``)."""

    matmul_sizes: tuple[int, ...]
    copy_bytes: int
    policy: TimingPolicy

    @staticmethod
    def for_device(device) -> CalibrationPlan:
        import torch

        if device.type == "cuda":
            # 4 GiB (the usual reference copy) unless a quarter of free memory is less.
            free = torch.cuda.mem_get_info(device)[0]
            return CalibrationPlan(
                matmul_sizes=(4096, 8192, 16384),
                copy_bytes=min(4 << 30, (free // 4) >> 20 << 20),
                # Warm-up long enough for the clocks to ramp; samples back to back (L2 hot):
                # a product this size is compute-bound and a copy this size dwarfs the L2.
                # A ceiling is no case check compares: no detectability to sample for.
                policy=TimingPolicy(l2="hot", warmup_ms=200.0, budget_ms=1500.0,
                                    min_samples=10, target_rse=0.005, detect=None))
        return CalibrationPlan(matmul_sizes=(256, 512), copy_bytes=256 << 20,
                               policy=TimingPolicy(l2="hot", warmup_ms=50.0, budget_ms=500.0,
                                                   min_samples=5, target_rse=0.01,
                                                   detect=None))


def parse_dtypes(text: str | None) -> tuple[str, ...]:
    if text is None:
        return CEILING_DTYPES
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [n for n in names if n not in CEILING_DTYPES]
    if unknown or not names:
        raise UserError(f"--dtypes: {', '.join(map(repr, unknown)) or 'nothing given'} is not "
                        f"one of {', '.join(CEILING_DTYPES)}")
    return names


def calibration_key(env: dict[str, Any]) -> str:
    """What the ceilings belong to: this GPU (UUID), its driver and torch; or this host's CPU."""
    if env.get("gpu_uuid"):
        return f"{env['gpu_uuid']} driver={env.get('driver')} torch={env.get('torch')}"
    return f"cpu {env.get('cpu')} host={env.get('host') or platform.node()} torch={env.get('torch')}"


def ceilings_path() -> Path:
    return cache_dir() / "ceilings.json"


def load_ceilings(env: dict[str, Any]) -> dict[str, Any] | None:
    """The cached calibration for this environment, or None when it was never calibrated."""
    record = load_entries(ceilings_path()).get(calibration_key(env))
    ok = isinstance(record, dict) and isinstance(record.get("matmul_tflops"), dict) \
        and isinstance(record.get("copy_gbps"), (int, float))
    return record if ok else None


def save_ceilings(record: dict[str, Any]) -> Path:
    """Store a record; dtypes measured before and not now are kept (a partial calibration
    such as ``--dtypes bf16`` adds to what was there)."""
    path = ceilings_path()
    before = load_entries(path).get(record["key"])
    if isinstance(before, dict):
        for field in ("matmul_tflops", "matmul_best_n", "matmul_tflops_by_n"):
            record[field] = (before.get(field) or {}) | record[field]
    try:
        store_entry(path, record["key"], record)
    except OSError as e:
        raise UserError(f"cannot write the calibration cache {path}: {e.strerror}") from None
    return path


def measure_matmul_tflops(device, dtype: str, n: int, policy: TimingPolicy) -> float:
    """Median rate of an n×n×n product of random normal matrices (2·n³ FLOPs)."""
    import torch

    from flashbench.measure.backends import torch_dtype

    torch_type = torch.float32 if dtype == "tf32" else torch_dtype(dtype)
    gen = torch.Generator(device=device).manual_seed(n)
    a = torch.randn(n, n, generator=gen, device=device, dtype=torch_type)
    b = torch.randn(n, n, generator=gen, device=device, dtype=torch_type)
    before = torch.get_float32_matmul_precision()
    # Only for this product: "high" lets fp32 inputs use tf32 tensor cores, "highest" forbids it.
    torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
    try:
        # A fresh output per product, as user code writes it. Sustained for the budget, one
        # size may fall short of a short burst (power capping); the best size is the ceiling
        # (results/reference/h100-telemetry/README.md).
        samples, _ = time_callable(lambda: a @ b, device, policy)
    finally:
        torch.set_float32_matmul_precision(before)
    return 2.0 * n**3 / (summarize(samples).median_ms / 1e3) / 1e12


def measure_copy_gbps(device, nbytes: int, policy: TimingPolicy) -> float:
    """Median rate of a device-memory copy of ``nbytes``, counting read plus write."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    samples, _ = time_callable(lambda: dst.copy_(src), device, policy)
    return 2.0 * nbytes / (summarize(samples).median_ms / 1e3) / 1e9


def skipped_dtypes(device, dtypes: tuple[str, ...]) -> dict[str, str]:
    """The dtypes this device cannot be calibrated for, and why: tf32 exists on CUDA only."""
    return {d: "tf32 tensor cores are a CUDA feature" for d in dtypes
            if d == "tf32" and device.type != "cuda"}


def calibration_steps(device, dtypes: tuple[str, ...],
                      plan: CalibrationPlan | None = None) -> int:
    """How many measurements ``calibrate`` makes (for a progress bar)."""
    plan = plan or CalibrationPlan.for_device(device)
    measured = [d for d in dtypes if d not in skipped_dtypes(device, dtypes)]
    return len(measured) * len(plan.matmul_sizes) + 1


def calibrate(device, env: dict[str, Any], dtypes: tuple[str, ...] = CEILING_DTYPES,
              plan: CalibrationPlan | None = None,
              step: Callable[[str], None] = lambda label: None) -> dict[str, Any]:
    """Measure the ceilings of ``device``; returns the record (not yet saved).

    ``step(label)`` is called before each measurement (a progress bar's hook). tf32 exists on
    CUDA only; on a CPU it is left out and said so in ``skipped``.
    """
    plan = plan or CalibrationPlan.for_device(device)
    matmul: dict[str, dict[str, float]] = {}
    skipped = skipped_dtypes(device, dtypes)
    for dtype in dtypes:
        if dtype in skipped:
            continue
        rates = {}
        for n in plan.matmul_sizes:
            step(f"matmul {dtype} {n}³")
            rates[str(n)] = round(measure_matmul_tflops(device, dtype, n, plan.policy), 4)
        matmul[dtype] = rates
    step(f"copy {plan.copy_bytes / 2**30:.2f} GiB")
    copy_gbps = measure_copy_gbps(device, plan.copy_bytes, plan.policy)
    best = {d: max(r, key=r.get) for d, r in matmul.items()}
    return {
        "key": calibration_key(env),
        "device_name": env.get("gpu_name") or env.get("cpu"),
        "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "flashbench": env.get("flashbench"),
        "git_commit": env.get("git_commit"),
        "matmul_tflops": {d: matmul[d][best[d]] for d in matmul},
        "matmul_best_n": {d: int(best[d]) for d in matmul},
        "matmul_tflops_by_n": matmul,
        "copy_gbps": round(copy_gbps, 2),
        "copy_bytes": plan.copy_bytes,
        "skipped": skipped,
    }


def cached_ceilings(env: dict[str, Any]) -> dict[str, Any]:
    """This machine's cached calibration (``calibrate --show``); bad input when there is none."""
    record = env.get("ceilings")
    if record is None:
        raise UserError(f"no calibration cached for {calibration_key(env)} in "
                        f"{ceilings_path()}; run `flashbench calibrate`")
    return record
