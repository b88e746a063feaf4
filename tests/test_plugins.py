"""Plugin backends: registration, plugin files and entry points, names, bad plugins, measurement."""

from pathlib import Path

import pytest
import torch

from flashbench import costs, plugins
from flashbench.backends import registry
from flashbench.cases import Case, Mode
from flashbench.config import load_config
from flashbench.errors import UserError
from flashbench.measure import measure_case
from flashbench.timing import TimingPolicy

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Each test starts from, and leaves, the plugins registered before it."""
    monkeypatch.setattr(plugins, "_REGISTERED", dict(plugins._REGISTERED))
    monkeypatch.setattr(plugins, "_LOADED_FILES", set(plugins._LOADED_FILES))
    monkeypatch.setattr(plugins, "_LOADED_ENTRY_POINTS", set(plugins._LOADED_ENTRY_POINTS))


def test_a_plugin_backend_is_measured_like_a_builtin():
    plugins.load_plugin_file(PLUGINS / "fast.py")
    case = Case(backend="fast-sdpa", mode=Mode.FWD, batch=1, heads=4, kv_heads=2, seq_len=24,
                kv_len=24, head_dim=32, dtype="fp32", causal=True)
    policy = TimingPolicy(l2="hot", warmup_ms=0, budget_ms=5, min_samples=3, max_samples=10)
    row = measure_case(case, torch.device("cpu"), policy)
    assert row["status"] == "ok" and row["rel_err"] < 1e-6 and row["n_samples"] >= 3
    assert row["hbm_bytes"] == costs.hbm_bytes(case, "flash")  # the traffic model plugins get
    assert registry()["fast-sdpa"].family == "plugin"
    shifted = Case(**(case.to_dict() | {"mode": Mode.FWD, "seq_len": 40, "kv_len": 24}))
    assert measure_case(shifted, torch.device("cpu"), policy)["status"] == "unsupported"


def test_names_are_checked_when_registered():
    register = plugins.register_backend
    with pytest.raises(ValueError, match="'naive' is a built-in backend"):
        register("naive")
    with pytest.raises(ValueError, match="must be 1-64 letters"):
        register("two words")

    def fn(q, k, v, *, causal, scale):
        """First line describes it.

        More text."""
        return q

    assert register("doc-test")(fn) is fn  # the decorator returns the function unchanged
    assert plugins.plugin_backends()["doc-test"].description == "First line describes it."
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
    "missing_dependency": ("import flashbench_no_such_dependency\n",
                           "does not import: ModuleNotFoundError: No module named "
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
    path = tmp_path / f"{name}.py"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as e:
        plugins.load_plugin_file(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    assert "half-ok" not in plugins.plugin_backends()  # nothing half-registered stays


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
    with pytest.raises(UserError) as e:
        plugins.load_entry_points()
    assert str(e.value) == ("plugin entry point 'bad' = fb_ep_plugin_bad (flashbench.backends, "
                            "from fb-ep-plugin) does not import: ImportError: needs CUDA 13")
    (info / "entry_points.txt").write_text("[flashbench.backends]\ngood = fb_ep_plugin_good\n")
    plugins.load_entry_points()
    assert plugins.plugin_backends()["ep-identity"].description == "Returns q."
