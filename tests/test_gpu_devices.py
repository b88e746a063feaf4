"""On CUDA: `flashbench run --devices all` on every GPU present, one pinned worker each.

The sweep runs in a child `python` whose parent role must never initialize CUDA; each row must
name the GPU that measured it, by this process's index and by UUID, and they must agree.
"""

import json
import subprocess
import sys

import pytest

from flashbench.core.cases import CASE_FIELDS

pytestmark = pytest.mark.gpu

PROBE = (
    "import atexit, sys\n"
    "def report():\n"
    "    torch = sys.modules.get('torch')\n"
    "    sys.stderr.write('parent cuda initialized: %s\\n'\n"
    "                     % bool(torch is not None and torch.cuda.is_initialized()))\n"
    "atexit.register(report)\n"
    "from flashbench.cli import app\n"
    "app()\n"
)


def uuid_of(index: int) -> str:
    import torch

    uuid = str(torch.cuda.get_device_properties(index).uuid)
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def test_devices_all_runs_one_worker_per_gpu(tmp_path):
    import torch

    count = torch.cuda.device_count()
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "name: tiny-gpu\ndevice: cuda\nbackends: [triton, sdpa, naive]\nbatch: 1\nheads: 4\n"
        "seq_len: [256, 512, 1024]\nhead_dim: 64\ndtype: bf16\ncausal: [false, true]\n"
        "timing: {warmup_ms: 2, budget_ms: 30, min_samples: 3}\n")
    out = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "run", "--config", str(config), "--devices", "all",
         "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "parent cuda initialized: False" in done.stderr
    (run_dir,) = out.iterdir()
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    keys = [tuple(r[f] for f in CASE_FIELDS) for r in rows]
    assert len(keys) == len(set(keys)) == 18
    assert all(r["status"] == "ok" and r["timer"] == "cuda-events" for r in rows), \
        [(r["backend"], r["status"], r["error"]) for r in rows if r["status"] != "ok"]
    for r in rows:
        assert r["gpu_uuid"].startswith("GPU-")
        assert r["gpu_uuid"] == uuid_of(r["device_index"])  # pinned to the GPU it names
        assert r["device"] == f"cuda:{r['device_index']}"
    # 6 shapes: each GPU (up to 6) got at least one; a shape's backends ran on one GPU.
    assert {r["device_index"] for r in rows} == set(range(min(count, 6)))
    by_shape: dict[tuple, set] = {}
    for k, r in zip(keys, rows):
        by_shape.setdefault(k[1:], set()).add(r["device_index"])
    assert all(len(gpus) == 1 for gpus in by_shape.values())
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed"
    assert [d["index"] for d in meta["devices"]] == list(range(count))
    assert [d["gpu_uuid"] for d in meta["devices"]] == [uuid_of(i) for i in range(count)]
    assert meta["environment"]["gpu_name"] == torch.cuda.get_device_properties(0).name
