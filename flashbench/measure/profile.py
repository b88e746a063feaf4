"""Kernel-level profile of one case: the kernels each backend launches, and the DRAM bytes they move.

Two views of the same call a sweep times (flashbench.measure.case.case_call, same inputs):

* torch.profiler: every GPU kernel (and memcpy/memset) the call launched, with counts and time
  per call; on a CPU, the aten operators instead.
* Nsight Compute, when it is installed and the device is a GPU: the call runs once more in a
  child process under ``ncu``, between cudaProfilerStart and Stop, and the hardware counters
  ``dram__bytes_read.sum`` and ``dram__bytes_write.sum`` of each kernel are summed. ncu flushes
  the caches before each kernel by default, so the figure is cold-cache traffic, the same
  assumption the modelled ``hbm_bytes`` (flashbench.core.costs) makes. This is where naive
  attention's N×N passes show up as measured bytes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from flashbench.core.cases import Case
from flashbench.core.config import expand_cases, validate_config
from flashbench.core.errors import UserError
from flashbench.sweep.executors import python_module_command

__all__ = ["DEFAULT_PROFILE", "NCU_METRICS", "PROFILE_FILE", "find_ncu", "kernels_table",
           "ncu_command", "parse_ncu_csv", "profile_case", "profile_cases", "profile_kernels",
           "save_profile", "summary_table"]

PROFILE_FILE = "profile.json"

# The shape the evidence asks about: long enough that naive's N×N passes dominate.
DEFAULT_PROFILE: dict[str, Any] = {"backends": ["naive", "sdpa-flash", "triton"], "batch": 4,
                                   "heads": 16, "seq_len": 4096, "head_dim": 128,
                                   "dtype": "bf16", "causal": False, "mode": "fwd"}
NCU_METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum")
_NCU_PLACES = ("/usr/local/cuda/bin/ncu", "/opt/nvidia/nsight-compute/*/ncu")
_SOURCE = "flashbench profile"


def profile_cases(given: dict[str, Any]) -> list[Case]:
    """One shape (the defaults above, overridden by ``given``; None means not given), each backend."""
    data = dict(DEFAULT_PROFILE)
    data.update({k: v for k, v in given.items() if v is not None})
    return expand_cases(validate_config(data, _SOURCE))


def find_ncu(explicit: str | None = None) -> str | None:
    """Nsight Compute's command line: the given path, on PATH, or where CUDA installs it."""
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise UserError(f"--ncu-path: {explicit} is not an executable file")
        return explicit
    found = shutil.which("ncu")
    if found:
        return found
    import glob

    for pattern in _NCU_PLACES:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


def profile_kernels(run, device, reps: int = 3) -> tuple[list[dict[str, Any]], float]:
    """The kernels ``reps`` calls of ``run`` launched, per call (name, launches, time in µs),
    and the wall time of one call under the profiler, in µs.

    On a GPU, every device-side event (kernels, memcpy, memset); on a CPU, aten operators by
    self time (there are no kernels; the operators are what the call is made of, and Triton's
    interpreter, which is Python and numpy, shows in none of them: hence the wall time).
    """
    import time

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with warnings.catch_warnings():
        # "Profiler clears events at the end of each cycle": one cycle here, nothing is lost.
        warnings.filterwarnings("ignore", message=".*clears events.*")
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            for _ in range(reps):
                run()
            if cuda:
                torch.cuda.synchronize(device)
            wall_us = (time.perf_counter() - started) * 1e6 / reps
    stats: dict[str, dict[str, float]] = {}
    if cuda:
        for evt in prof.events():
            if evt.device_type == DeviceType.CUDA:
                s = stats.setdefault(evt.name, {"launches": 0, "us": 0.0})
                s["launches"] += 1
                s["us"] += evt.time_range.elapsed_us()
    else:
        for evt in prof.key_averages():
            if evt.key.startswith("aten::") and evt.self_cpu_time_total > 0:
                stats[evt.key] = {"launches": evt.count, "us": evt.self_cpu_time_total}
    kind = "gpu-kernel" if cuda else "cpu-op"
    total = sum(s["us"] for s in stats.values()) or 1.0
    out = [{"kernel": name, "kind": kind, "launches_per_call": s["launches"] / reps,
            "us_per_call": s["us"] / reps, "share": s["us"] / total}
           for name, s in stats.items()]
    return sorted(out, key=lambda k: -k["us_per_call"]), wall_us


def ncu_command(ncu: str, log_file: Path, case: Case) -> list[str]:
    return [ncu, "--clock-control", "none", "--profile-from-start", "off",
            "--target-processes", "all", "--metrics", ",".join(NCU_METRICS), "--csv",
            "--print-units", "base", "--log-file", str(log_file),
            *python_module_command("flashbench.measure.profile_target"), json.dumps(case.to_dict())]


def _number(text: str) -> float:
    return float(text.replace(",", "").strip() or "nan")


_UNIT_BYTES = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12,
               "kibyte": 2**10, "mibyte": 2**20, "gibyte": 2**30}


def parse_ncu_csv(text: str) -> list[dict[str, Any]]:
    """Per kernel launch: name and the DRAM bytes read and written, from ncu's --csv output.

    Lines before the CSV header (ncu's ==PROF== notes, the program's own output) are skipped;
    values may carry thousands separators and units other than bytes.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if '"Metric Name"' in line and '"Kernel Name"' in line), None)
    if start is None:
        return []
    reader = csv.DictReader(io.StringIO("\n".join(
        line for line in lines[start:] if line.startswith('"'))))
    launches: dict[str, dict[str, Any]] = {}
    for row in reader:
        metric = row.get("Metric Name")
        if metric not in NCU_METRICS:
            continue
        launch = launches.setdefault(row["ID"], {"kernel": row["Kernel Name"],
                                                "dram_read_bytes": 0.0,
                                                "dram_write_bytes": 0.0})
        unit = (row.get("Metric Unit") or "byte").strip().lower()
        value = _number(row["Metric Value"]) * _UNIT_BYTES.get(unit, 1)
        launch["dram_read_bytes" if metric.endswith("read.sum") else "dram_write_bytes"] = value
    return list(launches.values())


def _ncu_bytes(case: Case, ncu: str, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "ncu.csv"
        try:
            done = subprocess.run(ncu_command(ncu, log, case), capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"ncu_error": f"ncu took longer than {timeout_s:.0f} s"}
        text = log.read_text() if log.exists() else ""
    launches = parse_ncu_csv(text)
    if done.returncode != 0 or not launches:
        tail = (done.stderr.strip().splitlines() or text.strip().splitlines() or ["no output"])
        return {"ncu_error": f"ncu exit {done.returncode}: {tail[-1][:300]}", "ncu_log": text or done.stderr}
    read = sum(k["dram_read_bytes"] for k in launches)
    write = sum(k["dram_write_bytes"] for k in launches)
    return {"dram_read_bytes": read, "dram_write_bytes": write, "dram_bytes": read + write,
            "ncu_launches": launches, "ncu_log": text}


def profile_case(case: Case, device, *, ncu: str | None, reps: int = 3,
                 ncu_timeout_s: float = 300.0) -> dict[str, Any]:
    """One backend's profile of ``case``: status, kernels, modelled and (with ncu) measured bytes."""
    from flashbench.core import costs
    from flashbench.measure.case import Refused, case_call, one_line

    result: dict[str, Any] = case.to_dict() | {
        "status": "ok", "error": None, "device": str(device),
        "hbm_bytes": costs.hbm_bytes(case, costs.algorithm_of(case.backend)),
        "kind": "gpu-kernel" if device.type == "cuda" else "cpu-op",
        "kernels": [], "gpu_us_per_call": None, "wall_us_per_call": None, "dram_read_bytes": None,
        "dram_write_bytes": None, "dram_bytes": None, "measured_over_model": None,
        "ncu_error": None if ncu else ("Nsight Compute (ncu) not found" if device.type == "cuda"
                                       else "DRAM counters need a GPU"),
    }
    try:
        run = case_call(case, device)
        result["kernels"], result["wall_us_per_call"] = profile_kernels(run, device, reps)
        if device.type == "cuda":
            result["gpu_us_per_call"] = sum(k["us_per_call"] for k in result["kernels"])
        del run
    except Refused as e:
        return result | {"status": "unsupported", "error": str(e)}
    except Exception as e:  # this backend's failure is its row; the others are still profiled
        return result | {"status": "error", "error": one_line(e)}
    finally:
        import gc

        gc.collect()
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()  # the ncu child needs the memory
    if ncu and device.type == "cuda":
        result.update(_ncu_bytes(case, ncu, ncu_timeout_s))
        if result["dram_bytes"] and result["hbm_bytes"]:
            result["measured_over_model"] = result["dram_bytes"] / result["hbm_bytes"]
    return result


def save_profile(out_root: Path, results: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """A run folder of its own (``profile-<time>-<hex>``): meta.json, profile.json, kernels.csv,
    and ncu's own CSV per backend (ncu-<backend>.csv) when it ran."""
    import secrets
    import time

    from flashbench.results.store import create_run

    run = create_run(out_root, f"profile-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
    try:
        for r in results:
            if r.get("ncu_log"):
                (run.path / f"ncu-{r['backend']}.csv").write_text(r["ncu_log"])
        results = [{k: v for k, v in r.items() if k != "ncu_log"} for r in results]
        (run.path / PROFILE_FILE).write_text(json.dumps(results, indent=1) + "\n")
        with open(run.path / "kernels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["backend", "kernel", "kind", "launches_per_call", "us_per_call",
                             "share"])
            for r in results:
                for k in r["kernels"]:
                    writer.writerow([r["backend"], k["kernel"], k["kind"], k["launches_per_call"],
                                     f"{k['us_per_call']:.3f}", f"{k['share']:.4f}"])
        run.write_meta(meta | {"run_id": run.path.name})  # last: a folder with meta is whole
    finally:
        run.close()
    return run.path


def _gb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e9:,.3f}"


def summary_table(results: list[dict[str, Any]], title: str):
    """Per backend: what ran, time per call, modelled against measured DRAM bytes."""
    from flashbench.output.fit import Column, Grid

    def col(header: str, values: list[str], **kw: Any) -> Column:
        return Column(header, values, **kw)

    def time_cell(r: dict[str, Any]) -> str:
        us = r["wall_us_per_call"] if r["kind"] == "cpu-op" else r["gpu_us_per_call"]
        return "–" if us is None else f"{us:,.1f}"

    ratios = [r["measured_over_model"] for r in results]
    cpu = any(r["kind"] == "cpu-op" for r in results)
    return Grid(title, [col("backend", [r["backend"] for r in results], justify="left")], [("", [
        col("status", [r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error'] or ''}"
                       for r in results], justify="left", fold=True),
        col("kernels" if not cpu else "ops", [str(len(r["kernels"])) for r in results]),
        col("launches", [f"{sum(k['launches_per_call'] for k in r['kernels']):g}"
                         for r in results]),
        col("time/call µs", [time_cell(r) for r in results]),
        col("model GB", [_gb(r["hbm_bytes"]) for r in results]),
        col("read GB", [_gb(r["dram_read_bytes"]) for r in results]),
        col("write GB", [_gb(r["dram_write_bytes"]) for r in results]),
        col("measured GB", [_gb(r["dram_bytes"]) for r in results]),
        col("measured/model", ["–" if x is None else f"{x:.2f}" for x in ratios])])],
        caption=("time/call: wall time of one call (on a CPU; its aten operators are listed "
                 "below) · " if cpu else "time/call: GPU time of the call's kernels · ")
        + "GB: 10⁹ bytes per call · model: flashbench's hbm_bytes for the backend's algorithm"
        + ("" if cpu else " · measured: ncu dram__bytes_read.sum + dram__bytes_write.sum over "
                          "every kernel of one call, caches flushed before each kernel"))


def kernels_table(results: list[dict[str, Any]], limit: int = 8):
    """The kernels of each backend, slowest first (at most ``limit`` each)."""
    from flashbench.output.fit import Column, Grid

    lines: list[tuple[str, str, str, str, str]] = []
    for r in results:
        for k in r["kernels"][:limit]:
            lines.append((r["backend"], k["kernel"], f"{k['launches_per_call']:g}",
                          f"{k['us_per_call']:,.1f}", f"{k['share']:.0%}"))
        if len(r["kernels"]) > limit:
            lines.append((r["backend"], f"... {len(r['kernels']) - limit} more in kernels.csv",
                          "", "", ""))
    columns = [list(c) for c in zip(*lines)] if lines else [[] for _ in range(5)]
    title = "kernels per call" if not any(r["kind"] == "cpu-op" for r in results) \
        else "aten operators per call (self CPU time)"
    return Grid(title, [Column("backend", columns[0], justify="left")],
                [("", [Column("kernel", columns[1], justify="left", fold=True),
                       Column("launches", columns[2]), Column("µs", columns[3]),
                       Column("share", columns[4])])])
