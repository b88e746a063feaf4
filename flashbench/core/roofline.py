"""Roofline arithmetic: a case's arithmetic intensity and its rates as shares of the ceilings.

Arithmetic intensity is the case's exact FLOPs over its backend's *modelled* HBM bytes
(flashbench.core.costs), so the same shape sits far left for naive attention, which moves N² bytes,
and far right for a flash kernel, which moves O(N). The ceilings come from
``flashbench calibrate``: the matmul rate of the case's dtype (fp32 inputs against the tf32
rate where the card has one, the fastest way it can multiply fp32 data) and the copy bandwidth.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ROOFLINE_FIELDS", "attainable_tflops", "peak_tflops", "ridge_intensity",
           "roofline_fields"]

ROOFLINE_FIELDS = ("arith_intensity", "pct_peak_flops", "pct_peak_bw")


def peak_tflops(ceilings: dict[str, Any], dtype: str) -> tuple[str, float] | None:
    """(ceiling name, TFLOP/s) that a case of ``dtype`` is measured against, if calibrated."""
    rates = ceilings.get("matmul_tflops") or {}
    for name in (("tf32", "fp32") if dtype == "fp32" else (dtype,)):
        if rates.get(name):
            return name, float(rates[name])
    return None


def attainable_tflops(intensity: float, peak: float, bandwidth_gbps: float) -> float:
    """The roof at an intensity (FLOP/byte): bandwidth-bound left of the ridge, flat right of it."""
    return min(peak, intensity * bandwidth_gbps / 1e3)


def ridge_intensity(peak: float, bandwidth_gbps: float) -> float:
    """FLOP/byte where the two roofs meet: below it a kernel cannot be compute-bound."""
    return peak * 1e3 / bandwidth_gbps


def roofline_fields(row: dict[str, Any], ceilings: dict[str, Any] | None) -> dict[str, Any]:
    """arith_intensity always (from the row's flops and hbm_bytes); the shares of peak (in
    percent) when there are ceilings and the row has rates."""
    flops, nbytes = row.get("flops"), row.get("hbm_bytes")
    out: dict[str, Any] = {"arith_intensity": flops / nbytes if flops and nbytes else None,
                           "pct_peak_flops": None, "pct_peak_bw": None}
    if not ceilings:
        return out
    peak = peak_tflops(ceilings, row.get("dtype", ""))
    if peak is not None and row.get("tflops") is not None:
        out["pct_peak_flops"] = 100.0 * row["tflops"] / peak[1]
    if row.get("gbps") is not None and ceilings.get("copy_gbps"):
        out["pct_peak_bw"] = 100.0 * row["gbps"] / float(ceilings["copy_gbps"])
    return out
