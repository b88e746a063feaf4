"""The result row: its fields in named groups, declared once, made blank in one place, validated on read.

A row is one case's result: the case fields (flashbench.core.cases) and the groups below. In
memory and on disk it is a plain JSON object (a dict), in the order of ``ROW_FIELDS``, so that
it travels over the worker's pipe and into ``results.jsonl`` as it is; ``Row`` is its schema,
which every reader checks a row against (``check_row``), so that a damaged or foreign file is
bad input, never a traceback or a wrong number.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from flashbench.core import costs
from flashbench.core.cases import CASE_FIELDS, SHAPE_FIELDS, Case, Mode, Status
from flashbench.core.errors import quoted
from flashbench.core.roofline import roofline_fields

__all__ = ["FIELD_GROUPS", "RESULT_FIELDS", "ROW_FIELDS", "Row", "RowError", "blank_row",
           "by_shape", "check_row", "device_fields", "finite_or_none"]

# What each group of fields says about the case (README, "Results on disk").
FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "outcome": ("status", "error", "resolved_backend"),
    "where": ("device", "timer", "l2", "matmul_precision"),
    # sample_rounds[i]: the round of the comparison group samples_ms[i] was taken in (the
    # backends of one shape sampled in alternating rounds); null when not interleaved.
    "latency": ("samples_ms", "sample_rounds", "median_ms", "mean_ms", "std_ms", "min_ms", "p20_ms", "p80_ms",
                "n_samples"),
    # tokens: the query tokens computed (a ragged batch's real ones); tokens_per_s by the median.
    "rates": ("flops", "tflops", "hbm_bytes", "gbps", "arith_intensity", "pct_peak_flops",
              "pct_peak_bw", "tokens", "tokens_per_s"),
    "memory": ("peak_alloc_bytes", "peak_reserved_bytes", "nvml_used_bytes"),
    "accuracy": ("max_abs_err", "rel_err"),
    "setup": ("setup_ms",),
    "telemetry": ("sm_clock_mhz", "sm_clock_min_mhz", "sm_clock_max_mhz", "mem_clock_mhz", "power_w", "temp_c", "throttle",
                  "nvml_mem_util_pct", "gpu_mem_used_bytes"),
    "device": ("device_index", "gpu_uuid"),  # stamped by the sweep: which device measured it
    "crash": ("stderr_tail",),  # only on crash and timeout rows
    # Only on rows of cases that left threads or processes running (their worker was
    # replaced): one line each, e.g. "left 1 thread running (spin); worker replaced".
    "warnings": ("warnings",),
}
RESULT_FIELDS: tuple[str, ...] = tuple(f for group in ("outcome", "where", "latency", "rates",
                                                        "memory", "accuracy", "setup",
                                                        "telemetry")
                                       for f in FIELD_GROUPS[group])
ROW_FIELDS: tuple[str, ...] = (*CASE_FIELDS, *(f for g in FIELD_GROUPS.values() for f in g))

Number = float | None  # JSON numbers; NaN and infinity are written as null
Count = StrictInt | None
# What no measurement can be: a size below 1, a time below 0 (a damaged or forged file).
Size = Annotated[StrictInt, Field(ge=1)]
Duration = Annotated[float, Field(ge=0)]


class Row(BaseModel):
    """The schema of a result row. Unknown extra fields (a newer flashbench's) are kept."""

    model_config = ConfigDict(extra="allow", strict=True)

    backend: StrictStr
    mode: Mode
    batch: Size
    heads: Size
    kv_heads: Size
    seq_len: Size
    kv_len: Size
    head_dim: Size
    dtype: Literal["fp16", "bf16", "fp32"]
    causal: StrictBool
    window: Annotated[StrictInt, Field(ge=0)] | None = None
    softcap: Annotated[float, Field(gt=0)] | None = None
    ragged: StrictStr | None = None
    page_size: Size | None = None
    status: Status
    error: StrictStr | None = None
    resolved_backend: StrictStr | None = None
    device: StrictStr | None = None
    timer: StrictStr | None = None
    l2: Literal["cold", "hot"] | None = None
    matmul_precision: Literal["tf32", "ieee"] | None = None
    samples_ms: list[Duration] = []
    sample_rounds: list[Annotated[StrictInt, Field(ge=0)]] | None = None
    median_ms: Duration | None = None
    mean_ms: Duration | None = None
    std_ms: Duration | None = None
    min_ms: Duration | None = None
    p20_ms: Duration | None = None
    p80_ms: Duration | None = None
    n_samples: Annotated[StrictInt, Field(ge=0)] | None = None
    flops: Count = None
    tflops: Number = None
    hbm_bytes: Count = None
    gbps: Number = None
    arith_intensity: Number = None
    pct_peak_flops: Number = None
    pct_peak_bw: Number = None
    tokens: Count = None
    tokens_per_s: Number = None
    peak_alloc_bytes: Count = None
    peak_reserved_bytes: Count = None
    nvml_used_bytes: Count = None
    max_abs_err: Number = None
    rel_err: Number = None
    setup_ms: Number = None
    sm_clock_mhz: Number = None
    sm_clock_min_mhz: Number = None
    sm_clock_max_mhz: Number = None
    mem_clock_mhz: Number = None
    power_w: Number = None
    temp_c: Number = None
    throttle: StrictStr | None = None
    nvml_mem_util_pct: Number = None
    gpu_mem_used_bytes: Count = None
    device_index: Count = None
    gpu_uuid: StrictStr | None = None
    stderr_tail: StrictStr | None = None
    warnings: list[StrictStr] | None = None


class RowError(ValueError):
    """A row that does not fit the schema: ``field`` names the first field that is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def check_row(data: Any) -> dict[str, Any]:
    """``data`` if it is a valid row (raises RowError naming the field otherwise)."""
    if not isinstance(data, dict):
        raise RowError("row", f"expected a JSON object, got {type(data).__name__}")
    try:
        # As JSON, the way rows are stored: enums are their strings, and a boolean is no number.
        Row.model_validate_json(json.dumps(data, default=str))
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "row"
        message = first["msg"][:1].lower() + first["msg"][1:]
        if first["type"] != "missing":  # the value, cut short: a line of a file can be huge
            message += f", got {quoted(first['input'], 80)}"
        raise RowError(field, message) from None
    return data


def blank_row(case: Case, device: str, l2: str) -> dict[str, Any]:
    """The row of ``case`` before anything is measured: every field, the counts filled in.

    The worker sends it before measuring, so a worker that dies mid-case still leaves a row
    that says what the case was and what it would have cost.
    """
    row: dict[str, Any] = case.to_dict() | dict.fromkeys(RESULT_FIELDS)
    row.update(device=device, l2=l2, samples_ms=[],
               timer="cuda-events" if device.startswith("cuda") else "perf-counter",
               flops=costs.flops(case), hbm_bytes=costs.hbm_bytes(case), tokens=case.tokens)
    row.update(roofline_fields(row, None))
    return row


def device_fields(device_index: int, gpu_uuid: str | None) -> dict[str, Any]:
    return {"device_index": device_index, "gpu_uuid": gpu_uuid}


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: an absent figure is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def by_shape(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """Rows grouped by shape (every case field but the backend), each group by backend, in
    order of first appearance: the side-by-side view of a run. A row without one of the newer
    case fields (built in memory by older code) is the dense case, as reading a run makes it."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(f) for f in SHAPE_FIELDS), {})[r["backend"]] = r
    return groups
