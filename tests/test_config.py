"""Config loading, flag overrides, grid expansion and every bad input's one-line message."""

import pytest

from flashbench.core.cases import Mode
from flashbench.core.config import TimingPolicy, list_presets, load_config
from flashbench.core.grid import expand_cases
from flashbench.core.errors import UserError
from flashbench.results.check import MAX_THRESHOLD


def test_presets_ship_and_validate():
    assert {"default", "quick", "cpu"} <= set(list_presets())
    for name in list_presets():
        cfg = load_config(name)
        assert expand_cases(cfg), name


def test_default_preset_grid():
    cfg = load_config("default")
    cases = expand_cases(cfg)
    assert len(cases) == 7 * 4 * 2 * 2  # backends x seq_len x head_dim x causal
    assert {c.backend for c in cases} >= {"triton", "sdpa-cudnn", "naive"}
    # one shape's backends run back to back
    assert len({c.shape_key for c in cases[:7]}) == 1


def test_overrides_replace_axes_and_defaults_fill_kv():
    cfg = load_config("cpu", {"seq_len": [32, 48], "kv_len": None, "heads": [6],
                              "kv_heads": [3], "causal": [True], "backends": ["naive"],
                              "l2": "hot", "budget_ms": 50.0})
    cases = expand_cases(cfg)
    assert [(c.seq_len, c.kv_len, c.heads, c.kv_heads, c.causal) for c in cases] == [
        (32, 32, 6, 3, True), (48, 48, 6, 3, True)]
    assert cfg.timing.l2 == "hot" and cfg.timing.budget_ms == 50.0
    assert cases[0].mode is Mode.FWD


def test_yaml_file_with_scalars(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("backends: naive\nseq_len: 100\nkv_len: 300\nhead_dim: 32\ndtype: fp16\n"
                 "heads: 8\nkv_heads: 1\n")
    (c,) = expand_cases(load_config(str(f)))
    assert (c.backend, c.seq_len, c.kv_len, c.head_dim, c.dtype, c.heads, c.kv_heads) == \
        ("naive", 100, 300, 32, "fp16", 8, 1)


@pytest.mark.parametrize("overrides, message", [
    ({"backends": ["tritn"]}, "unknown backend 'tritn' (did you mean 'triton'?)"),
    ({"seq_len": [0]}, "seq_len: must be between 1 and"),
    ({"batch": [-4]}, "batch: must be between 1 and"),
    ({"head_dim": [1 << 20]}, "head_dim: must be between 1 and 1024"),
    ({"dtype": ["fp8"]}, "dtype: 'fp8' is not allowed"),
    ({"heads": [12], "kv_heads": [8]}, "heads (12) must be a multiple of kv_heads (8)"),
    ({"mode": ["backward"]}, "mode: 'backward' is not allowed"),
    ({"l2": "warm"}, "timing.l2: 'warm' is not allowed"),
])
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(UserError) as e:
        load_config("cpu", overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_misspelled_key_suggests(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("seqlen: [128]\n")
    with pytest.raises(UserError, match=r"unknown key 'seqlen' \(did you mean 'seq_len'\?\)"):
        load_config(str(f))


def test_wrong_type_and_yaml_syntax(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("heads: many\n")
    with pytest.raises(UserError, match="heads"):
        load_config(str(f))
    f.write_text("heads: [1, 2\nbatch: 3\n")
    with pytest.raises(UserError, match=r"YAML syntax error at line \d+"):
        load_config(str(f))
    f.write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(str(f))


def test_unknown_preset_and_missing_file():
    with pytest.raises(UserError, match=r"unknown preset 'defualt' \(did you mean 'default'\?\)"):
        load_config("defualt")
    with pytest.raises(UserError, match="config file not found"):
        load_config("no/such/file.yaml")


@pytest.mark.parametrize("text, value", [("0.02", 0.02), ("null", None), ("off", None),
                                         ("'off'", None), ("9.99", 9.99)])
def test_timing_detect_is_a_share_and_off_or_null_turns_it_off(tmp_path, text, value):
    assert TimingPolicy().detect == 0.05 and load_config("cpu").timing.detect == 0.05
    f = tmp_path / "d.yaml"
    f.write_text(f"timing: {{detect: {text}}}\n")
    assert load_config(str(f)).timing.detect == value
    assert load_config("cpu", {"detect": "off"}).timing.detect is None  # run --detect off


@pytest.mark.parametrize("value, message", [
    (0.0, "timing.detect: Input should be greater than 0"),
    (MAX_THRESHOLD, "timing.detect: Input should be less than 10"),  # check's own limit
    ("true", "timing.detect: Input should be a valid number"),
    ("5%", "timing.detect: Input should be a valid number"),
])
def test_timing_detect_refuses_what_checks_threshold_refuses(tmp_path, value, message):
    f = tmp_path / "d.yaml"
    f.write_text(f"timing: {{detect: {value}}}\n")
    with pytest.raises(UserError) as e:
        load_config(str(f))
    assert message in str(e.value) and "\n" not in str(e.value)
