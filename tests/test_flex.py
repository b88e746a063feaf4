"""The flex backend on CPU (eager FlexAttention): every mask, the cap, GQA and the layouts against the reference; its refusals; a sweep."""

import json

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.core.cases import Case, Mode
from flashbench.core.config import TimingPolicy
from flashbench.kernels import flex
from flashbench.measure.group import measure_case
from flashbench.measure.inputs import AttentionInputs, make_inputs
from flashbench.measure.reference import errors, reference_output, tolerance

CPU = torch.device("cpu")
FAST = TimingPolicy(l2="hot", warmup_ms=0, budget_ms=5, min_samples=2, max_samples=5)
RAGGED = "lens(20,64,33)"


def case(**kw) -> Case:
    base = dict(backend="flex", mode=Mode.FWD, batch=2, heads=4, kv_heads=2, seq_len=64,
                kv_len=64, head_dim=32, dtype="fp32", causal=True)
    return Case(**(base | kw))


@pytest.mark.parametrize("kw", [
    dict(causal=False), dict(), dict(seq_len=24, kv_len=56), dict(causal=False, kv_len=40),
    dict(window=16), dict(window=0), dict(softcap=20.0), dict(window=16, softcap=20.0),
    dict(heads=4, kv_heads=4, window=7, softcap=5.0), dict(heads=6, kv_heads=1, softcap=3.0),
    dict(ragged=RAGGED, batch=3), dict(ragged=RAGGED, batch=3, causal=False, softcap=5.0),
    dict(ragged=RAGGED, batch=3, window=16, softcap=20.0),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "causal")
def test_flex_matches_the_reference(kw):
    c = case(**kw)
    inputs = make_inputs(c, CPU)
    out = flex.prepare(inputs)()
    assert out.shape == inputs.q.shape  # the packed layout back for a ragged batch
    _, rel = errors(out, reference_output(inputs, torch.float64))
    assert rel < tolerance("fp32", "ieee")


def small_paged_inputs(kv_len=50, seq_len=5, page=16, pool=11, window=None, softcap=None,
                       causal=True) -> AttentionInputs:
    """A paged cache in a pool of 11 pages (make_inputs' pool is 256 MiB and more, which eager
    flex on a CPU would score whole)."""
    gen = torch.Generator().manual_seed(3)
    batch, heads, kv_heads, d = 2, 4, 2, 32
    per_seq = -(-kv_len // page)
    table = torch.randperm(pool, generator=gen)[:batch * per_seq].view(batch, per_seq)
    return AttentionInputs(
        torch.randn(batch, heads, seq_len, d, generator=gen),
        torch.randn(pool, page, kv_heads, d, generator=gen),
        torch.randn(pool, page, kv_heads, d, generator=gen), causal=causal, scale=d ** -0.5,
        window=window, softcap=softcap, layout="paged", block_table=table.int(),
        cache_seqlens=torch.full((batch,), kv_len, dtype=torch.int32), kv_len=kv_len)


@pytest.mark.parametrize("kw", [dict(), dict(causal=False, softcap=4.0),
                                dict(window=9, softcap=20.0), dict(seq_len=1, kv_len=33)])
def test_flex_paged_attention_reads_our_pool_in_place(kw):
    inputs = small_paged_inputs(**kw)
    tensors, kwargs, back = flex._paged(inputs)
    q, k, v = tensors
    # The pool as flex's (1, Hkv, pages·page_size, D) cache: the same memory, not a copy.
    assert k.shape == (1, 2, 11 * 16, 32) and k.data_ptr() == inputs.k.data_ptr()
    assert torch.equal(k[0, :, 16 * 3 + 5], inputs.k[3, 5])
    kwargs |= {"score_mod": flex._score_mod(inputs.softcap), "scale": inputs.scale,
               "enable_gqa": True}
    out = back(flex_attention(q, k, v, **kwargs))
    _, rel = errors(out, reference_output(inputs, torch.float64))
    assert rel < tolerance("fp32", "ieee")


def test_flex_rows_say_what_ran_and_what_a_cpu_refuses():
    dense = measure_case(case(window=16, softcap=20.0), CPU, FAST)
    assert dense["status"] == "ok", dense["error"]
    assert dense["resolved_backend"] == "flex (eager)" and dense["matmul_precision"] == "ieee"
    assert dense["setup_ms"] > 0 and dense["rel_err"] < 1e-4
    ragged = measure_case(case(ragged=RAGGED, batch=3), CPU, FAST)
    assert ragged["status"] == "ok", ragged["error"]
    assert ragged["resolved_backend"] == "flex (eager) + document mask"
    backward = measure_case(case(mode=Mode.BWD), CPU, FAST)
    assert backward["status"] == "unsupported"
    assert backward["error"].startswith("flex: no backward on a CPU")
    paged = measure_case(case(seq_len=1, kv_len=40, page_size=16), CPU, FAST)
    assert paged["status"] == "unsupported" and "paged cache on a CPU" in paged["error"]
    shifted = measure_case(case(seq_len=40, kv_len=10), CPU, FAST)
    assert shifted["status"] == "unsupported" and "seq_len > kv_len" in shifted["error"]


SWEEP = """\
device: cpu
backends: [naive, flex]
batch: 2
heads: 4
kv_heads: [2]
seq_len: 64
head_dim: 32
dtype: fp32
causal: [false, true]
window: [null, 16]
softcap: [20.0]
seq_lens: [null, [20, 64, 33]]
timing: {budget_ms: 5, min_window_ms: 0, min_samples: 2, warmup_ms: 1}
"""


def test_a_sweep_with_windows_softcaps_and_ragged_batches_gives_flex_rows_ok(tmp_path):
    config = tmp_path / "flex.yaml"
    config.write_text(SWEEP)
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", "--config", str(config), "-o", str(out),
                                      "--no-progress", "--no-isolate"])
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["backend"] == "flex"]
    # full and causal, a window on the causal ones, each dense and ragged
    assert len(mine) == 6 and len(rows) == 12
    for row in mine:
        assert row["status"] == "ok", row["error"]
        assert row["rel_err"] < 1e-4 and row["softcap"] == 20.0
    assert {r["resolved_backend"] for r in mine} == {"flex (eager)",
                                                     "flex (eager) + document mask"}
    assert {r["window"] for r in mine} == {None, 16} and {r["ragged"] for r in mine} == {
        None, "lens(20,64,33)"}


@pytest.mark.parametrize(("device", "shape", "compiled"), [
    pytest.param("cuda", (1, None, 124514, 124514), True, id="ragged-124k-tokens"),
    pytest.param("cuda", (1, None, 20952, 20952), False, id="ragged-21k-tokens"),
    pytest.param("cuda", (None, None, 32768, 32768), False, id="window-32k"),
    pytest.param("cuda", (64, None, 1, 131072), False, id="paged-decode"),
    pytest.param("cpu", (1, None, 124514, 124514), False, id="cpu-never"),
])
def test_the_block_mask_is_compiled_only_where_eager_would_not_fit(device, shape, compiled):
    # Eager holds 8 bytes a (query, key) pair at once (116 GiB at 124k ragged tokens, the
    # H200's oom); compiled costs a compile per case, so only past 2^31 pairs, and on CUDA.
    assert flex._mask_compiled(torch.device(device), *shape) is compiled
