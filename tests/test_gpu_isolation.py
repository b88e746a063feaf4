"""On a CUDA device: a device-side fault, a hung kernel and a real out-of-memory, each in a worker.

Each sweep runs in a child `python` whose parent role must never initialize CUDA.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

PLUGINS = Path(__file__).parent / "plugins"
DRIVER = """
import json, sys
from pathlib import Path
from flashbench.core.config import load_config
from flashbench.core.plugins import load_plugins
from flashbench.sweep.runner import SweepOptions, run_sweep
files = load_plugins(sys.argv[3:])
result = run_sweep(load_config(sys.argv[1]), Path(sys.argv[2]),
                   SweepOptions(progress=False, plugins=files))
torch = sys.modules.get("torch")
print(json.dumps({"status": result.status, "rows": result.rows,
                  "parent_cuda": bool(torch is not None and torch.cuda.is_initialized())}))
"""


def sweep(tmp_path: Path, backends: list[str], timeout_s: int, seq_len=(1024,)) -> dict:
    config = tmp_path / "gpu.yaml"
    config.write_text(
        f"name: gpu-faults\ndevice: cuda\nbackends: [{', '.join(backends)}]\nbatch: 2\n"
        f"heads: 8\nseq_len: [{', '.join(map(str, seq_len))}]\nhead_dim: 64\ndtype: bf16\n"
        f"causal: false\ncase_timeout_s: {timeout_s}\n"
        "timing: {warmup_ms: 2, budget_ms: 50, min_samples: 3}\n")
    pidfile = tmp_path / "pids"
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(config), str(tmp_path / "runs"),
         str(PLUGINS / "gpu_faults.py"), str(PLUGINS / "faults.py")],
        env=os.environ | {"FLASHBENCH_TEST_PIDFILE": str(pidfile)},
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    result["pids"] = [ln.split() for ln in pidfile.read_text().splitlines()] \
        if pidfile.exists() else []
    return result


def test_illegal_memory_access_is_a_crash_and_a_real_oom_is_not(tmp_path):
    result = sweep(tmp_path, ["gpu-illegal-address", "gpu-oom", "gpu-sdpa", "triton",
                              "fault-abort", "sdpa"], timeout_s=300, seq_len=(1024, 2048))
    assert result["status"] == "completed" and not result["parent_cuda"]
    rows = result["rows"]
    expected = {"gpu-illegal-address": "crash", "gpu-oom": "oom", "gpu-sdpa": "ok",
                "triton": "ok", "fault-abort": "crash", "sdpa": "ok"}
    for n in (1024, 2048):  # (a row is written when final: a group's failures come first)
        assert {r["backend"]: r["status"] for r in rows if r["seq_len"] == n} == expected
    assert len(rows) == 12
    rows = sorted(rows, key=lambda r: (r["seq_len"], list(expected).index(r["backend"])))
    illegal = rows[0]["error"]
    assert "CUDA context is unusable" in illegal, illegal
    assert any(s in illegal for s in ("illegal memory access", "illegal address",
                                      "unspecified launch failure")), illegal
    assert "out of memory" in rows[1]["error"].lower()
    assert "SIGABRT" in rows[4]["error"] and "Aborted" in rows[4]["stderr_tail"]
    for row in rows:
        if row["status"] == "ok":
            assert row["rel_err"] < 2e-2 and row["timer"] == "cuda-events", row
    # [name, pid] in the order the gpu_faults plugins ran: after the illegal access a new
    # worker ran gpu-oom, and after that out-of-memory the same worker ran gpu-sdpa.
    (n0, p0), (n1, p1), (n2, p2) = result["pids"][:3]
    assert (n0, n1, n2) == ("gpu-illegal-address", "gpu-oom", "gpu-sdpa")
    assert p1 != p0 and p2 == p1


def test_a_hung_kernel_times_out_and_the_gpu_is_usable_again(tmp_path):
    result = sweep(tmp_path, ["gpu-spin", "gpu-sdpa", "naive"], timeout_s=20)
    assert not result["parent_cuda"]
    rows = result["rows"]
    assert [r["status"] for r in rows] == ["timeout", "ok", "ok"]
    assert "exceeded the case timeout of 20 s" in rows[0]["error"]
