"""flash-attn and flashinfer: absent (here and on the GPU machine) they say why, and present (fake packages with reference math) they get the right arguments."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.measure import inputs as measure_inputs

FAKES = Path(__file__).parent / "fake_packages"
PACKAGES = ("flash_attn", "flashinfer", "fake_attention")
# The parent of a sweep given --config imports no torch, and neither package's absence
# changes that: the probe reports what it imported when it exits.
PARENT_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    "'parent imported torch: %s\\n' % ('torch' in sys.modules)))\n"
    "from flashbench.cli import app\n"
    "app()\n"
)
TIMING = "timing: {budget_ms: 5, min_window_ms: 0, min_samples: 2, warmup_ms: 1}\n"
absent = pytest.mark.skipif(
    any(importlib.util.find_spec(name) for name in ("flash_attn", "flashinfer")),
    reason="flash-attn or flashinfer is installed here: the absent path cannot be seen")


@pytest.fixture(autouse=True)
def no_fake_left_imported():
    """A fake imported by one test must not make the package look installed to the next."""
    for name in PACKAGES:
        sys.modules.pop(name, None)
    yield
    for name in PACKAGES:
        sys.modules.pop(name, None)


def rows_of(out: Path) -> list[dict]:
    (run_dir,) = out.iterdir()
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def sweep(tmp_path: Path, body: str, *, env: dict | None = None) -> subprocess.CompletedProcess:
    """`flashbench run` as a user runs it: a process of its own, cases in a worker."""
    config = tmp_path / "sweep.yaml"
    config.write_text(body + TIMING)
    return subprocess.run([sys.executable, "-c", PARENT_PROBE, "run", "--config", str(config),
                           "-o", str(tmp_path / "runs"), "--no-progress"],
                          capture_output=True, text=True, timeout=300,
                          env=os.environ | (env or {}))


@absent
def test_absent_packages_are_listed_with_why_not():
    result = CliRunner().invoke(app, ["list", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = {ln.split()[1]: ln for ln in result.stdout.splitlines() if ln.startswith("│")}
    assert "flash-attn: not installed (pip install flash-attn)" in lines["flash-attn"]
    assert "flashinfer: not installed (pip install flashinfer-python)" in lines["flashinfer"]
    assert " no " in lines["flash-attn"] and " yes " in lines["flex"]


@absent
def test_absent_packages_make_rows_unsupported_and_the_sweep_goes_on(tmp_path):
    result = sweep(tmp_path, "device: cpu\nbackends: [flash-attn, flashinfer, naive]\n"
                             "batch: 1\nheads: 2\nseq_len: 16\nhead_dim: 16\ndtype: bf16\n"
                             "causal: [false, true]\n")
    assert result.returncode == 0, result.stderr
    assert "parent imported torch: False" in result.stderr
    rows = rows_of(tmp_path / "runs")
    assert len(rows) == 6
    why = {"naive": None, "flash-attn": "flash-attn: not installed (pip install flash-attn)",
           "flashinfer": "flashinfer: not installed (pip install flashinfer-python)"}
    for row in rows:
        assert row["status"] == ("ok" if row["backend"] == "naive" else "unsupported")
        assert row["error"] == why[row["backend"]]


FAKE_SWEEP = """\
device: cpu
backends: [flash-attn, flashinfer]
batch: 2
heads: 4
kv_heads: 2
seq_len: 24
kv_len: 40
head_dim: 32
dtype: [bf16, fp32]
causal: [false, true]
window: [null, 16]
softcap: [null, 20.0]
seq_lens: [null, [20, 64, 33]]
page_size: [null, 16]
"""


def test_flash_attn_present_gets_bnhd_views_window_tuples_softcap_and_cu_seqlens(tmp_path):
    calls = tmp_path / "calls.jsonl"
    result = sweep(tmp_path, FAKE_SWEEP,
                   env={"PYTHONPATH": str(FAKES), "FLASHBENCH_FAKE_CALLS": str(calls)})
    assert result.returncode == 0, result.stderr
    assert "parent imported torch: False" in result.stderr
    rows = rows_of(tmp_path / "runs")
    fa = [r for r in rows if r["backend"] == "flash-attn"]
    ok = [r for r in fa if r["status"] == "ok"]
    # bf16: dense and ragged, each full, causal and windowed, with and without the cap
    assert len(ok) == 12 and all(r["rel_err"] < 2e-2 for r in ok)
    assert {r["resolved_backend"] for r in ok} == {
        "flash-attn 2.99.0+fake flash_attn_func (BNHD views)",
        "flash-attn 2.99.0+fake flash_attn_varlen_func"}
    refused = {(r["dtype"], r["page_size"]): r["error"] for r in fa if r["status"] != "ok"}
    assert all(r["status"] == "unsupported" for r in fa if r["status"] != "ok")
    assert refused[("fp32", None)].startswith("flash-attn has fp16 and bf16 kernels only")
    assert "multiple of 256, not 16" in refused[("bf16", 16)]
    fi = [r for r in rows if r["backend"] == "flashinfer"]
    assert all(r["status"] == "unsupported" for r in fi)  # no paged decode step in this grid
    logged = [json.loads(line) for line in calls.read_text().splitlines()]
    dense = [c for c in logged if c["function"] == "flash_attn_func"]
    # (B, N, H, D) views of our (B, H, N, D) tensors: N's stride is H·D, no copy was made
    assert {tuple(c["q"]["shape"]) for c in dense} == {(2, 24, 4, 32)}
    assert {tuple(c["q"]["stride"]) for c in dense} == {(24 * 4 * 32, 32, 24 * 32, 1)}
    assert {tuple(c["k"]["stride"]) for c in dense} == {(40 * 2 * 32, 32, 40 * 32, 1)}
    assert all(c["window_is_tuple"] for c in dense)
    assert {(c["causal"], tuple(c["window_size"])) for c in dense} == {
        (False, (-1, -1)), (True, (-1, -1)), (True, (16, 0))}
    assert {c["softcap"] for c in dense} == {0.0, 20.0}
    assert {c["softmax_scale"] for c in dense} == {1 / math.sqrt(32)}
    varlen = [c for c in logged if c["function"] == "flash_attn_varlen_func"]
    assert {(tuple(c["cu_seqlens_q"]), tuple(c["cu_seqlens_k"]), c["max_seqlen_q"],
             c["max_seqlen_k"]) for c in varlen} == {((0, 20, 84, 117), (0, 20, 84, 117), 64, 64)}
    assert {tuple(c["q"]["shape"]) for c in varlen} == {(117, 4, 32)}


def paged_sweep(tmp_path: Path, monkeypatch, body: str) -> list[dict]:
    """A paged sweep in this process (--no-isolate), with a pool of a few pages instead of
    256 MiB and more, and the fake packages importable here."""
    monkeypatch.setattr(measure_inputs, "POOL_SPARE_BYTES", 64 << 10)
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.setenv("FLASHBENCH_FAKE_CALLS", str(tmp_path / "calls.jsonl"))
    config = tmp_path / "paged.yaml"
    config.write_text(body + TIMING)
    result = CliRunner().invoke(app, ["run", "--config", str(config), "-o",
                                      str(tmp_path / "runs"), "--no-progress", "--no-isolate"])
    assert result.exit_code == 0, result.output
    return rows_of(tmp_path / "runs")


PAGED_SWEEP = """\
device: cpu
backends: [flash-attn, flashinfer]
batch: 2
heads: 4
kv_heads: 2
seq_len: [1, 4]
kv_len: 600
head_dim: 32
dtype: bf16
causal: true
window: [null, 100]
softcap: [null, 30.0]
page_size: 256
"""


def test_paged_caches_reach_flash_attn_and_flashinfer_as_our_pool(tmp_path, monkeypatch):
    rows = paged_sweep(tmp_path, monkeypatch, PAGED_SWEEP)
    by = {(r["backend"], r["seq_len"]): r for r in rows if r["window"] and r["softcap"]}
    for row in rows:
        if row["backend"] == "flashinfer" and row["seq_len"] == 4:
            assert row["status"] == "unsupported" and "seq_len 1" in row["error"]
        else:
            assert row["status"] == "ok", row["error"]
            assert row["rel_err"] < 2e-2
    assert by[("flash-attn", 4)]["resolved_backend"].endswith(
        "flash_attn_with_kvcache (BNHD view of q)")
    assert by[("flashinfer", 1)]["resolved_backend"] == \
        "flashinfer 0.99.0+fake BatchDecodeWithPagedKVCacheWrapper"
    logged = [json.loads(ln) for ln in (tmp_path / "calls.jsonl").read_text().splitlines()]
    kv = [c for c in logged if c["function"] == "flash_attn_with_kvcache"]
    assert {tuple(c["block_table"]) for c in kv} == {(2, 3)}  # ceil(600 / 256) pages each
    assert {tuple(c["cache_seqlens"]) for c in kv} == {(600, 600)}
    assert {tuple(c["window_size"]) for c in kv} == {(-1, -1), (100, 0)}
    assert {c["softcap"] for c in kv} == {0.0, 30.0}
    assert all(c["k_cache"]["shape"][1:] == [256, 2, 32] for c in kv)  # the pool as it is
    plans = [c for c in logged if c["function"] == "plan"]
    assert {(tuple(c["indptr"]), tuple(c["last_page_len"]), c["page_size"]) for c in plans} \
        == {((0, 3, 6), (88, 88), 256)}
    assert {(c["window_left"], c["logits_soft_cap"]) for c in plans} == {
        (-1, None), (100, None), (-1, 30.0), (100, 30.0)}
    assert {tuple(c["q"]["shape"]) for c in logged if c["function"] == "run"} == {(2, 4, 32)}
