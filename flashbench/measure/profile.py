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
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from flashbench.core.cases import Case, RunStatus, Status
from flashbench.core.config import validate_config
from flashbench.core.grid import expand_cases
from flashbench.core.errors import UserError
from flashbench.core.subprocesses import python_module_command

__all__ = ["DEFAULT_PROFILE", "NCU_METRICS", "PROFILE_FILE", "Profile", "find_ncu",
           "ncu_command", "parse_ncu_csv", "profile_case", "profile_cases", "profile_kernels",
           "run_profile", "save_profile"]

PROFILE_FILE = "profile.json"

# Long enough that naive attention's N×N passes dominate its traffic (a GPU shape: on a CPU,
# under Triton's interpreter, it takes hours, and `flashbench profile` says so first).
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
    from flashbench.core.errors import one_line
    from flashbench.measure.case import Refused, case_call

    result: dict[str, Any] = case.to_dict() | {
        "status": Status.OK, "error": None, "device": str(device),
        "hbm_bytes": costs.hbm_bytes(case),
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
        return result | {"status": Status.UNSUPPORTED, "error": str(e)}
    except Exception as e:  # this backend's failure is its row; the others are still profiled
        return result | {"status": Status.ERROR, "error": one_line(e)}
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


@dataclass
class Profile:
    path: Path  # the profile's folder
    results: list[dict[str, Any]]  # one per backend
    meta: dict[str, Any]


def run_profile(cases: list[Case], device, *, out: Path, ncu: str | None, reps: int,
                command: list[str], log: Callable[[str], None] = lambda line: None) -> Profile:
    """Profile one shape's cases (profile_cases) on ``device`` and save it under ``out``;
    ``log`` hears a line per backend as it starts."""
    import time

    from flashbench.measure.machine import capture_environment
    from flashbench.results.store import check_root

    check_root(out)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results = []
    for case in cases:
        log(f"profiling {case.label()}" + (" (+ ncu)" if ncu else ""))
        results.append(profile_case(case, device, ncu=ncu, reps=reps))
    meta = {"kind": "profile", "status": RunStatus.COMPLETED, "started_at": started,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
            "ncu": ncu, "reps": reps,
            "case": {k: v for k, v in cases[0].to_dict().items() if k != "backend"},
            "backends": [c.backend for c in cases], "environment": capture_environment(device)}
    return Profile(save_profile(out, results, meta), results, meta)
