"""Plugin backends: the README's example end to end, plugin files and entry points, names, bad plugins."""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flashbench.core import costs

from flashbench.core import plugins, registry
from flashbench.measure.backends import get_backend
from flashbench.core.cases import Case, Mode
from flashbench.cli import app
from flashbench.core.config import load_config
from flashbench.core.errors import UserError
from flashbench.measure.group import measure_case
from flashbench.core.config import TimingPolicy

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).parent / "plugins"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Each test starts with no plugin loaded, and leaves those loaded before it as they were."""
    monkeypatch.setattr(registry, "_PLUGINS", {})
    monkeypatch.setattr(plugins, "_LOADED_FILES", set())
    monkeypatch.setattr(plugins, "_LOADED_ENTRY_POINTS", set())


def test_a_plugin_backend_is_measured_like_a_builtin():
    plugins.load_plugin_file(PLUGINS / "fast.py")
    case = Case(backend="fast-sdpa", mode=Mode.FWD, batch=1, heads=4, kv_heads=2, seq_len=24,
                kv_len=24, head_dim=32, dtype="fp32", causal=True)
    policy = TimingPolicy(l2="hot", warmup_ms=0, budget_ms=5, min_samples=3, max_samples=10)
    row = measure_case(case, torch.device("cpu"), policy)
    assert row["status"] == "ok" and row["rel_err"] < 1e-6 and row["n_samples"] >= 3
    assert row["hbm_bytes"] == costs.hbm_bytes(case, "flash")  # the traffic model plugins get
    assert get_backend("fast-sdpa").family == "plugin"
    shifted = Case(**(case.to_dict() | {"mode": Mode.FWD, "seq_len": 40, "kv_len": 24}))
    assert measure_case(shifted, torch.device("cpu"), policy)["status"] == "unsupported"


def readme_example(tmp_path: Path) -> Path:
    """The complete plugin file the README shows, written out as a user would save it."""
    readme = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(# my_attention\.py.*?)```", readme, re.S)
    path = tmp_path / "my_attention.py"
    path.write_text(code)
    return path


def test_readme_example_is_listed_checked_timed_and_reported_like_a_builtin(tmp_path):
    example = readme_example(tmp_path)
    listed = invoke("list", "--device", "cpu", "--plugin", example)
    assert listed.exit_code == 0, listed.output
    line = next(ln for ln in listed.stdout.splitlines() if "my-attention" in ln)
    assert "plugin" in line and "yes" in line
    out = tmp_path / "runs"
    # GQA (4 query heads over 2 KV heads, the cpu preset) and a KV cache longer than the queries.
    result = invoke("run", "--config", "cpu", "--plugin", example, "--backends",
                    "my-attention,naive", "--seq-len", "24", "--kv-len", "40", "--out", out,
                    "--no-progress", "--no-isolate")
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    rows = [json.loads(ln) for ln in (run_dir / "results.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["backend"] == "my-attention"]
    assert [r["causal"] for r in mine] == [False, True]
    for row in mine:
        assert row["status"] == "ok" and row["rel_err"] < 1e-6 and row["n_samples"] >= 3
        assert (row["heads"], row["kv_heads"], row["seq_len"], row["kv_len"]) == (4, 2, 24, 40)
        assert row["hbm_bytes"] == costs.hbm_bytes(Case.from_dict(row), "flash")
        assert row["gbps"] > 0 and row["resolved_backend"] == "my-attention"
    assert "my-attention" in result.stdout  # a column of the table, like any backend
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["plugins"] == [str(example.resolve())]


def test_no_isolate_runs_the_plugin_in_this_process(tmp_path, monkeypatch):
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("FLASHBENCH_TEST_PIDFILE", str(pidfile))
    result = invoke("run", "--config", "cpu", "--plugin", PLUGINS / "slow.py", "--backends",
                    "slow-sdpa", "--seq-len", "16", "--no-causal", "--budget-ms", "1",
                    "--out", tmp_path / "runs", "--no-progress", "--no-isolate")
    assert result.exit_code == 0, result.output
    assert int(pidfile.read_text()) == os.getpid()


def test_names_are_checked_when_registered():
    register = registry.register_backend
    with pytest.raises(ValueError, match="'naive' is a built-in backend"):
        register("naive")
    with pytest.raises(ValueError, match="must be 1-64 letters"):
        register("two words")

    def fn(q, k, v, *, causal, scale):
        """First line describes it.

        More text."""
        return q

    assert register("doc-test")(fn) is fn  # the decorator returns the function unchanged
    assert registry.plugin_specs()["doc-test"].description == "First line describes it."
    fn.__module__ = "somewhere.else"  # the same name from another plugin
    with pytest.raises(ValueError, match="'doc-test' is already registered by"):
        register("doc-test")(fn)


def test_unknown_backend_suggests_plugin_names():
    with pytest.raises(UserError, match=r"unknown backend 'fast-sdpa'.*--plugin FILE"):
        load_config("cpu", {"backends": ["fast-sdpa"]})
    plugins.load_plugin_file(PLUGINS / "fast.py")
    with pytest.raises(UserError, match=r"'fast-sdp' \(did you mean 'fast-sdpa'\?\)"):
        load_config("cpu", {"backends": ["fast-sdp"]})
    assert load_config("cpu", {"backends": ["fast-sdpa"]}).backends == ["fast-sdpa"]


BAD_PLUGINS = {
    "missing_dependency": (None, "does not import: ModuleNotFoundError: No module named "
                                 "'flashbench_no_such_dependency'"),
    "syntax": ("import flashbench\ndef f(:\n", "does not import: SyntaxError: invalid syntax"),
    "builtin_name": ("import flashbench\n@flashbench.register_backend('sdpa')\n"
                     "def f(q, k, v, *, causal, scale):\n    return q\n",
                     "'sdpa' is a built-in backend"),
    "half_registered": ("import flashbench\n@flashbench.register_backend('half-ok')\n"
                        "def f(q, k, v, *, causal, scale):\n    return q\n"
                        "raise RuntimeError('configuration missing')\n",
                        "RuntimeError: configuration missing"),
    "registers_nothing": ("import math\n", "registers no backend"),
    "no_such_file": (None, "no such file"),
}


@pytest.mark.parametrize("name", BAD_PLUGINS)
def test_a_bad_plugin_is_bad_input_with_one_line(tmp_path, name):
    text, message = BAD_PLUGINS[name]
    if name == "missing_dependency":
        path = PLUGINS / "broken.py"
    else:
        path = tmp_path / f"{name}.py"
        if text is not None:
            path.write_text(text)
    out = tmp_path / "runs"
    result = invoke("run", "--config", "cpu", "--plugin", path, "--out", out, "--no-progress")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and str(path) in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists()
    assert "half-ok" not in registry.plugin_specs()  # nothing half-registered stays


def test_entry_point_group_loads_installed_plugins(tmp_path, monkeypatch):
    site = tmp_path / "site"
    info = site / "fb_ep_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fb-ep-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[flashbench.backends]\ngood = fb_ep_plugin_good\nbad = fb_ep_plugin_bad\n")
    (site / "fb_ep_plugin_good.py").write_text(
        "import flashbench\n@flashbench.register_backend('ep-identity')\n"
        "def identity(q, k, v, *, causal, scale):\n    '''Returns q.'''\n    return q\n")
    (site / "fb_ep_plugin_bad.py").write_text("raise ImportError('needs CUDA 13')\n")
    monkeypatch.syspath_prepend(str(site))
    result = invoke("list", "--device", "cpu")
    assert result.exit_code == 2
    assert result.stderr == ("error: plugin entry point 'bad' = fb_ep_plugin_bad "
                             "(flashbench.backends, from fb-ep-plugin) does not import: "
                             "ImportError: needs CUDA 13\n")
    (info / "entry_points.txt").write_text("[flashbench.backends]\ngood = fb_ep_plugin_good\n")
    result = invoke("list", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "ep-identity" in result.stdout and "Returns q." in result.stdout


def test_a_plugin_may_give_prepare_unsupported_resolve_and_be_a_baseline():
    from flashbench.results.compare import compare_backends

    prepared = []

    @registry.register_backend("prep-sdpa", prepare=True, baseline=True,
                               unsupported=lambda case: "no fp16 here" if case.dtype == "fp16"
                               else None,
                               resolve=lambda q, k, v, *, causal: "prep-sdpa/math")
    def prepare(q, k, v, *, causal, scale):
        """SDPA behind a prepare step that runs once, outside the samples."""
        import torch.nn.functional as F

        prepared.append(q.shape)
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                                      enable_gqa=True)

    policy = TimingPolicy(l2="hot", warmup_ms=0, budget_ms=5, min_samples=3, max_samples=10)
    case = Case(backend="prep-sdpa", mode=Mode.FWD, batch=1, heads=4, kv_heads=2, seq_len=24,
                kv_len=24, head_dim=32, dtype="fp32", causal=True)
    row = measure_case(case, torch.device("cpu"), policy)
    assert row["status"] == "ok" and row["rel_err"] < 1e-6 and row["n_samples"] >= 3
    assert row["resolved_backend"] == "prep-sdpa/math"
    assert len(prepared) == 1  # prepared once; the samples only call what it returned
    fp16 = measure_case(Case(**(case.to_dict() | {"mode": Mode.FWD, "dtype": "fp16"})),
                        torch.device("cpu"), policy)
    assert fp16["status"] == "unsupported" and fp16["error"] == "no fp16 here"
    # Declared a baseline: compare's default baseline is the fastest of the baselines.
    naive = dict(row, backend="naive", median_ms=row["median_ms"] * 3)
    frame = compare_backends([row, naive])
    assert frame["baseline"].iloc[0] == "prep-sdpa"
    assert frame["naive:speedup"].iloc[0] == pytest.approx(1 / 3)
