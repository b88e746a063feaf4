"""flashbench profile: kernels per backend on CPU, ncu's CSV parsed, the profile's own folder."""

import json

import pytest
from typer.testing import CliRunner

from flashbench.core import costs
from flashbench.core.cases import Case, Mode
from flashbench.cli import app
from flashbench.measure.profile import find_ncu, ncu_command, parse_ncu_csv, profile_cases

runner = CliRunner()
TINY = ["--seq-len", "64", "--heads", "2", "--batch", "1", "--head-dim", "32"]

# The shape of ncu --csv --print-units base output: notes and program output first, then one
# row per (kernel launch, metric); values may carry thousands separators.
NCU_CSV = '''==PROF== Connected to process 4242 (/usr/bin/python3)
==PROF== Profiling "kernel_a": 0%....50%....100% - 1 pass
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","4242","python3","127.0.0.1","kernel_a","1","7","(128, 1, 1)","(64, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","1,048,576"
"0","4242","python3","127.0.0.1","kernel_a","1","7","(128, 1, 1)","(64, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","524,288"
"1","4242","python3","127.0.0.1","kernel_b","1","7","(256, 1, 1)","(8, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","Mbyte","2.5"
"1","4242","python3","127.0.0.1","kernel_b","1","7","(256, 1, 1)","(8, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","0"
==PROF== Disconnected from process 4242
'''


def test_ncu_csv_gives_bytes_per_launch():
    assert parse_ncu_csv(NCU_CSV) == [
        {"kernel": "kernel_a", "dram_read_bytes": 1048576.0, "dram_write_bytes": 524288.0},
        {"kernel": "kernel_b", "dram_read_bytes": 2.5e6, "dram_write_bytes": 0.0}]
    assert parse_ncu_csv("==PROF== ERR_NVGPUCTRPERM\n") == []


def test_ncu_command_profiles_one_call_without_touching_clocks(tmp_path):
    case = Case(backend="triton", mode=Mode.FWD, batch=1, heads=2, kv_heads=2, seq_len=64,
                kv_len=64, head_dim=16, dtype="bf16", causal=False)
    cmd = ncu_command("/x/ncu", tmp_path / "log.csv", case)
    assert cmd[:5] == ["/x/ncu", "--clock-control", "none", "--profile-from-start", "off"]
    assert "dram__bytes_read.sum,dram__bytes_write.sum" in cmd
    assert cmd[-3:-1] == ["-m", "flashbench.measure.profile_target"]
    assert Case.from_dict(json.loads(cmd[-1])) == case


def test_cli_profiles_each_backend_into_its_own_folder(tmp_path):
    result = runner.invoke(app, ["profile", "--device", "cpu", *TINY, "--out", str(tmp_path),
                                 "--reps", "2"])
    assert result.exit_code == 0, result.output
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("profile-")
    assert sorted(p.name for p in folder.iterdir()) == ["kernels.csv", "meta.json", "profile.json"]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == "profile" and meta["backends"] == ["naive", "sdpa-flash", "triton"]
    assert meta["case"]["seq_len"] == 64 and meta["environment"]["device"] == "cpu"
    results = {r["backend"]: r for r in json.loads((folder / "profile.json").read_text())}
    for name, r in results.items():
        case = Case.from_dict({k: r[k] for k in meta["case"]} | {"backend": name})
        assert r["status"] == "ok" and r["kernels"], (name, r["error"])
        assert r["hbm_bytes"] == costs.hbm_bytes(case)
        assert r["dram_bytes"] is None and r["ncu_error"] == "DRAM counters need a GPU"
        assert sum(k["share"] for k in r["kernels"]) == pytest.approx(1.0)
    # Naive attention as written: two batched products and one softmax per call.
    naive = {k["kernel"]: k for k in results["naive"]["kernels"]}
    assert naive["aten::bmm"]["launches_per_call"] == 2
    assert naive["aten::_softmax"]["launches_per_call"] == 1
    assert "aten::bmm" not in {k["kernel"] for k in results["sdpa-flash"]["kernels"]}
    csv_lines = (folder / "kernels.csv").read_text().splitlines()
    assert csv_lines[0] == "backend,kernel,kind,launches_per_call,us_per_call,share"
    assert len(csv_lines) == 1 + sum(len(r["kernels"]) for r in results.values())
    assert "naive" in result.stdout and "aten::bmm" in result.stdout
    # Time per call on a CPU is the wall time: Triton's interpreter is Python and numpy, which
    # no aten operator accounts for.
    triton = results["triton"]
    assert triton["gpu_us_per_call"] is None and triton["kind"] == "cpu-op"
    assert triton["wall_us_per_call"] > 5 * sum(k["us_per_call"] for k in triton["kernels"])
    assert f"{triton['wall_us_per_call']:,.1f}" in result.stdout
    # A profile folder is not a run: the latest-run lookup passes it by.
    report = runner.invoke(app, ["report", "--results-dir", str(tmp_path)])
    assert report.exit_code == 2 and "no runs under" in report.stderr


def test_a_refusing_backend_is_a_row_not_the_end(tmp_path):
    result = runner.invoke(app, ["profile", "--device", "cpu", *TINY, "--backends",
                                 "sdpa-cudnn,naive", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (folder,) = tmp_path.iterdir()
    cudnn, naive = json.loads((folder / "profile.json").read_text())
    assert cudnn["status"] == "unsupported" and "CUDA" in cudnn["error"] and not cudnn["kernels"]
    assert naive["status"] == "ok"


@pytest.mark.parametrize("args, message", [
    (["--backends", "flash3"], "unknown backend 'flash3'"),
    (["--heads", "12", "--kv-heads", "8"], "must be a multiple of kv_heads"),
    (["--dtype", "int8"], "dtype: 'int8' is not allowed"),
    (["--seq-len", "0"], "seq_len: must be between 1"),
    (["--mode", "both"], "mode"),
    (["--reps", "0"], "--reps"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    result = runner.invoke(app, ["profile", "--device", "cpu", *TINY, *args,
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_named_ncu_must_exist(tmp_path):
    from flashbench.core.errors import UserError

    with pytest.raises(UserError, match="--ncu-path: .* is not an executable file"):
        find_ncu(str(tmp_path / "ncu"))


def test_profile_cases_is_one_shape_each_backend():
    cases = profile_cases({"backends": ["naive", "triton"], "seq_len": 256, "heads": None})
    assert [c.backend for c in cases] == ["naive", "triton"]
    assert {(c.seq_len, c.heads, c.head_dim, c.batch, c.dtype) for c in cases} == {
        (256, 16, 128, 4, "bf16")}


@pytest.mark.gpu
def test_gpu_profile_measures_dram_bytes_near_the_model(tmp_path):
    """Needs ncu: skipped where Nsight Compute is not installed."""
    if find_ncu() is None:
        pytest.skip("Nsight Compute (ncu) not installed")
    result = runner.invoke(app, ["profile", "--seq-len", "2048", "--heads", "8", "--batch", "1",
                                 "--backends", "naive,triton", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (folder,) = tmp_path.iterdir()
    results = {r["backend"]: r for r in json.loads((folder / "profile.json").read_text())}
    for name, r in results.items():
        assert r["status"] == "ok" and r["ncu_error"] is None, r
        assert r["kernels"][0]["kind"] == "gpu-kernel"
        assert (folder / f"ncu-{name}.csv").exists()
    # A flash kernel reads Q, K and V from DRAM once each: K and V re-reads hit the L2. Its
    # writes may be short of the model: dirty lines still in the L2 when the kernel ends (O is
    # 4 MiB here) are not DRAM traffic of the kernel.
    qkv_bytes = 3 * 1 * 8 * 2048 * 128 * 2
    assert results["triton"]["dram_read_bytes"] == pytest.approx(qkv_bytes, rel=0.05)
    # Naive's passes at this size (64 MiB of scores) leave part of each write in the L2 too:
    # 0.88 of the model measured on an H100, 1.00 at N=4096, B=4, H=16.
    assert 0.8 < results["naive"]["measured_over_model"] < 1.2
    # The point of the tool: naive moves the N×N matrices, flash does not.
    assert results["naive"]["dram_bytes"] > 10 * results["triton"]["dram_bytes"]
