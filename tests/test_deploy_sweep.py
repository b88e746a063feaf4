"""Windows, softcaps, ragged batches and paged caches through the sweep: every backend checked
against the reference on each new kind of case, or refused with its reason; plugins get the
arguments of what they declare."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.core import costs, plugins, registry
from flashbench.core.cases import Case, Mode
from flashbench.measure.inputs import dense_kv, make_inputs, packed, padded
from flashbench.measure.reference import reference_attention, reference_output

runner = CliRunner()
TIMING = "timing: {l2: hot, warmup_ms: 0, budget_ms: 5, min_samples: 1, max_samples: 3, " \
         "min_window_ms: 0, detect: null}\n"
BACKENDS = ["naive", "sdpa", "sdpa-math", "sdpa-flash"]


def _run(tmp_path: Path, grid: str, *extra: str) -> list[dict]:
    config = tmp_path / "deploy.yaml"
    config.write_text(f"device: cpu\nbackends: [{', '.join(BACKENDS)}]\nheads: 4\nkv_heads: 2\n"
                      f"head_dim: 16\ndtype: fp32\n{grid}{TIMING}")
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(tmp_path / "runs"),
                                 "--no-progress", "--no-isolate", *extra])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def _by_backend(rows):
    out = {}
    for r in rows:
        out.setdefault(r["backend"], []).append(r)
    return out


def test_windows_and_softcaps_are_checked_or_refused_with_a_reason(tmp_path):
    rows = _run(tmp_path, "batch: 2\nseq_len: 40\ncausal: true\nwindow: [null, 0, 7, 100]\n"
                          "softcap: [null, 3.0]\n")
    assert len(rows) == 8 * len(BACKENDS)
    for r in rows:
        case = Case.from_dict(r)
        assert r["flops"] == costs.flops(case)
        if r["backend"] == "naive":  # runs every mask and the cap: its error is small
            assert r["status"] == "ok" and r["rel_err"] < 1e-6, r
        elif r["backend"] == "sdpa-flash" and r["window"] is not None:
            assert r["status"] == "unsupported" and "explicit mask" in r["error"]
        elif r["softcap"] is not None:
            assert r["status"] == "unsupported" and "softcap" in r["error"]
        else:
            assert r["status"] == "ok" and r["rel_err"] < 1e-6, r
    # A window of 0 is the diagonal alone: its FLOPs are N pairs per head, exactly.
    diag = next(r for r in rows if r["window"] == 0 and r["softcap"] is None)
    assert diag["flops"] == 4 * 2 * 4 * 16 * 40


def test_ragged_batches_count_real_tokens_and_pad_only_where_a_backend_must(tmp_path):
    rows = _run(tmp_path, "causal: [false, true]\nseq_lens: [[1, 17, 40, 9]]\n")
    for r in rows:
        assert r["tokens"] == 67 and r["batch"] == 4 and r["seq_len"] == 40
        assert r["ragged"] == "lens(1,17,40,9)"
        if r["backend"] == "sdpa-flash":
            assert r["status"] == "unsupported"
            continue
        assert r["status"] == "ok" and r["rel_err"] < 1e-6, r
        assert r["tokens_per_s"] == pytest.approx(67 / (r["median_ms"] / 1e3))
        if r["backend"].startswith("sdpa"):
            assert r["resolved_backend"].endswith("(padded)")


def test_paged_caches_are_gathered_by_backends_without_a_paged_kernel(tmp_path):
    rows = _run(tmp_path, "batch: 3\nseq_len: [1, 4]\nkv_len: [50]\npage_size: [16, 64]\n"
                          "causal: true\nwindow: [null, 20]\n")
    assert {r["page_size"] for r in rows} == {16, 64}
    for r in rows:
        if r["backend"] == "sdpa-flash" and r["window"] is not None:
            assert r["status"] == "unsupported"
            continue
        assert r["status"] == "ok" and r["rel_err"] < 1e-6, r
        if r["backend"].startswith("sdpa"):
            assert r["resolved_backend"].endswith("(gathered)")


def test_paged_inputs_are_a_scattered_pool_whose_gather_is_the_cache():
    c = Case("naive", Mode.FWD, 3, 4, 2, 1, 50, 16, "fp32", False, page_size=16)
    inputs = make_inputs(c, torch.device("cpu"))
    per_seq = 4  # 50 keys in pages of 16
    assert inputs.block_table.shape == (3, per_seq)
    pages = inputs.block_table.flatten().tolist()
    assert len(set(pages)) == 12 and pages != sorted(pages)  # distinct and out of order
    assert inputs.k.shape[0] > 12 and inputs.k.shape[1:] == (16, 2, 16)  # a bigger pool
    k, v = dense_kv(inputs)
    assert k.shape == (3, 2, 50, 16)
    page, slot = divmod(37, 16)
    assert torch.equal(k[1, :, 37], inputs.k[inputs.block_table[1, page], slot])
    one_k, one_v = dense_kv(inputs, 1)  # one sequence's (what the reference gathers)
    assert torch.equal(one_k, k[1:2]) and torch.equal(one_v, v[1:2])
    # The reference on the gathered cache is the reference of the paged case.
    ref = reference_output(inputs, torch.float64)
    assert torch.allclose(ref, reference_attention(inputs.q, k, v, causal=False,
                                                   scale=inputs.scale, dtype=torch.float64))


def test_padding_a_ragged_batch_and_packing_it_back_is_the_identity():
    c = Case("naive", Mode.FWD, 3, 4, 2, 9, 9, 16, "fp32", True, ragged="lens(3,9,1)")
    inputs = make_inputs(c, torch.device("cpu"))
    assert inputs.q.shape == (13, 4, 16) and inputs.cu_seqlens.tolist() == [0, 3, 12, 13]
    p = padded(inputs, inputs.q)
    assert p.shape == (3, 4, 9, 16) and torch.all(p[0, :, 3:] == 0)
    assert torch.equal(packed(inputs, p), inputs.q)


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(registry, "_PLUGINS", {})
    monkeypatch.setattr(plugins, "_LOADED_FILES", set())


def test_plugins_get_the_arguments_of_the_features_they_declare(tmp_path, fresh_registry):
    plugin = tmp_path / "windowed.py"
    plugin.write_text('''
import torch
import flashbench
from flashbench.measure.masks import keep_mask

@flashbench.register_backend("windowed", features=("window",))
def windowed(q, k, v, *, causal, scale, window=None):
    keep = keep_mask(q.shape[2], k.shape[2], causal=causal, window=window, device=q.device)
    return torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=keep, scale=scale)

@flashbench.register_backend("dense-only")
def dense_only(q, k, v, *, causal, scale):
    return torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=causal, scale=scale)
''')
    global BACKENDS
    saved, BACKENDS = BACKENDS, ["windowed", "dense-only"]
    try:
        rows = _run(tmp_path, "batch: 1\nseq_len: 24\ncausal: true\nwindow: [null, 5]\n"
                              "softcap: [null, 2.0]\n", "--plugin", str(plugin))
    finally:
        BACKENDS = saved
    status = {(r["backend"], r["window"], r["softcap"]): (r["status"], r["error"]) for r in rows}
    assert status[("windowed", 5, None)][0] == "ok"
    assert status[("dense-only", None, None)][0] == "ok"
    assert status[("dense-only", 5, None)] == ("unsupported",
                                               "plugin dense-only does not support a sliding window")
    assert status[("windowed", 5, 2.0)] == ("unsupported",
                                            "plugin windowed does not support a logit softcap")


def test_a_plugin_declaring_an_unknown_feature_is_refused(fresh_registry):
    with pytest.raises(ValueError, match="unknown feature 'alibi'"):
        registry.register_backend("x", features=("alibi",))
