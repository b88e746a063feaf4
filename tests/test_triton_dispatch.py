"""What the triton backend runs per mode, feature and layout: the reasons, the kernel each call goes to, the backward's and the decode kernel's keywords."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kernel_inputs import DEVICE, F32, make_inputs

from flashbench.core.cases import Case, Mode
from flashbench.core.config import TimingPolicy
from flashbench.kernels import triton_decode, triton_flash, triton_flash_bwd
from flashbench.kernels import triton_flash_support as support
from flashbench.kernels.triton_flash_configs import tuning_key
from flashbench.measure.group import measure_case
from flashbench.measure.inputs import make_inputs as case_inputs
from flashbench.measure.reference import reference_gradients, reference_output

FAST = TimingPolicy(l2="hot", warmup_ms=0, budget_ms=5, min_samples=3, max_samples=5)
BASE = Case(backend="triton", mode=Mode.FWD, batch=2, heads=4, kv_heads=2, seq_len=40,
            kv_len=40, head_dim=32, dtype="fp32", causal=True)
RAGGED = "lens(20,40,7)"


def case(**changes) -> Case:
    return dataclasses.replace(BASE, **changes)


def inputs_of(c: Case, grad: bool = False):
    inputs = case_inputs(c, torch.device(DEVICE))
    for t in inputs.tensors:
        t.requires_grad_(grad)
    return inputs


def test_the_backend_declares_what_its_forward_runs() -> None:
    assert {"window", "softcap", "ragged"} <= triton_flash.FEATURES
    assert ("paged" in triton_flash.FEATURES) == ("paged" in support.DECODE_FEATURES)


@pytest.mark.parametrize("changes", [
    {}, {"window": 8}, {"softcap": 20.0}, {"ragged": RAGGED}, {"ragged": RAGGED, "window": 3},
    {"window": 8, "softcap": 5.0}, {"seq_len": 1, "kv_len": 600, "window": 64},
    {"seq_len": 4, "kv_len": 300, "softcap": 30.0}, {"mode": Mode.BWD},
    {"mode": Mode.FWD_BWD, "kv_heads": 1},
    # A window that hides no key is causal attention, backward included.
    {"mode": Mode.BWD, "window": 39}, {"mode": Mode.FWD_BWD, "window": 1000},
])
def test_supported_cases(changes: dict) -> None:
    assert triton_flash.unsupported_case(case(**changes)) is None


@pytest.fixture
def without_backward_and_decode_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatch as it is for a kernel lacking a feature (the backward and decode kernels
    before they had theirs): what such a case says, and where it goes."""
    monkeypatch.setattr(support, "BACKWARD_FEATURES", frozenset())
    monkeypatch.setattr(support, "DECODE_FEATURES", frozenset())


@pytest.mark.usefixtures("without_backward_and_decode_features")
@pytest.mark.parametrize(("changes", "reason"), [
    ({"mode": Mode.BWD, "window": 8}, "backward of a sliding window: not yet"),
    ({"mode": Mode.FWD_BWD, "softcap": 5.0, "ragged": RAGGED},
     "backward of a logit softcap and a ragged batch: not yet"),
    ({"seq_len": 1, "kv_len": 600, "page_size": 16},
     "a paged KV cache is read by the decode kernel only: the decode kernel does not support "
     "a paged KV cache yet"),
    ({"page_size": 16}, "a paged KV cache is read by the decode kernel only: not a decode shape"),
    ({"window": 8, "causal": False}, "a sliding window needs causal"),
    ({"head_dim": 80}, "head_dim 80 is not one of"),
    ({"seq_len": 50}, "causal with seq_len (50) > kv_len (40)"),
])
def test_unsupported_cases_say_why(changes: dict, reason: str) -> None:
    said = triton_flash.unsupported_case(case(**changes))
    assert said is not None and said.startswith(reason) and "\n" not in said


def test_the_kernels_features_let_the_cases_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "DECODE_FEATURES", frozenset({"paged"}))
    assert triton_flash.unsupported_case(case(mode=Mode.BWD, window=8, softcap=2.0)) is None
    assert triton_flash.unsupported_case(case(mode=Mode.FWD_BWD, ragged=RAGGED)) is None
    assert triton_flash.unsupported_case(case(seq_len=1, kv_len=600, page_size=16)) is None
    said = triton_flash.unsupported_case(case(seq_len=1, kv_len=600, page_size=16, window=9))
    assert said is not None and "does not support a sliding window" in said


@pytest.mark.parametrize(("changes", "grad", "kernel"), [
    ({}, False, "triton-flash"),
    ({"ragged": RAGGED}, False, "triton-flash-varlen"),
    ({"ragged": RAGGED}, True, "triton-flash-varlen"),
    ({"seq_len": 1, "kv_len": 600}, False, "triton-decode"),
    ({"seq_len": 1, "kv_len": 600}, True, "triton-flash"),
    # The decode kernel has its window and softcap.
    ({"seq_len": 1, "kv_len": 600, "window": 64}, False, "triton-decode"),
    ({"seq_len": 2, "kv_len": 600, "softcap": 10.0}, False, "triton-decode"),
    # ... unless the window hides nothing.
    ({"seq_len": 1, "kv_len": 600, "window": 599}, False, "triton-decode"),
    ({"seq_len": 1, "kv_len": 600, "page_size": 64}, False, "triton-decode-paged"),
])
def test_kernel_name_says_which_kernel_runs(changes: dict, grad: bool, kernel: str) -> None:
    assert triton_flash.kernel_name(inputs_of(case(**changes), grad)) == kernel


def test_kernel_name_and_prepare_still_take_dense_tensors() -> None:
    q, k, v = make_inputs(1, 2, 1, 1, 300, 32, F32)
    assert triton_flash.kernel_name(q, k, causal=False) == "triton-decode"
    q, k, v = make_inputs(1, 2, 1, 20, 30, 32, F32)
    assert triton_flash.kernel_name(q, k, causal=True) == "triton-flash"
    out = triton_flash.prepare(q, k, v, causal=True, scale=0.2)()
    assert out.shape == q.shape
    with pytest.raises(TypeError, match="AttentionInputs"):
        triton_flash.prepare(q, k, v, causal=True)


@pytest.mark.parametrize("changes", [
    {"seq_len": 3, "kv_len": 300, "window": 50, "softcap": 5.0},  # decode-shaped: prefill kernel
    {"ragged": RAGGED, "window": 6, "softcap": 5.0},
    {"ragged": "lens(1,33,16)", "causal": False},
])
def test_prepare_runs_the_features(changes: dict) -> None:
    inputs = inputs_of(case(**changes))
    out = triton_flash.prepare(inputs)()
    ref = reference_output(inputs, torch.float64)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_decode_shapes_go_to_the_decode_kernel_with_its_keywords(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "DECODE_FEATURES", frozenset({"window", "softcap", "paged"}))
    calls = []

    def decode_forward(q, k, v, **kwargs):
        calls.append(kwargs)
        return torch.zeros_like(q), None

    monkeypatch.setattr(triton_decode, "decode_forward", decode_forward)
    dense = inputs_of(case(seq_len=1, kv_len=600, window=64, softcap=30.0))
    assert triton_flash.kernel_name(dense) == "triton-decode"
    triton_flash.prepare(dense)()
    assert calls[-1] == {"causal": True, "scale": dense.scale, "fp32_precision": "tf32",
                         "window": 64, "softcap": 30.0}
    paged = inputs_of(case(seq_len=1, kv_len=600, page_size=64))
    triton_flash.prepare(paged, fp32_precision="ieee")()
    assert calls[-1]["block_table"] is paged.block_table
    assert calls[-1]["cache_seqlens"] is paged.cache_seqlens
    assert calls[-1]["fp32_precision"] == "ieee" and "window" not in calls[-1]


@pytest.mark.usefixtures("without_backward_and_decode_features")
def test_a_paged_cache_without_the_decode_kernel_is_refused_when_prepared() -> None:
    with pytest.raises(ValueError, match="paged KV cache is read by the decode kernel only"):
        triton_flash.prepare(inputs_of(case(seq_len=1, kv_len=600, page_size=64)))


@pytest.mark.usefixtures("without_backward_and_decode_features")
def test_autograd_refuses_a_backward_the_kernels_do_not_have() -> None:
    q, k, v = (t.requires_grad_() for t in make_inputs(1, 2, 1, 20, 20, 32, F32))
    out = triton_flash.attention(q, k, v, causal=True, scale=0.2, window=4)
    with pytest.raises(NotImplementedError, match="backward of a sliding window: not yet"):
        out.sum().backward()


def test_a_window_that_hides_nothing_has_the_causal_backward() -> None:
    q, k, v = (t.requires_grad_() for t in make_inputs(1, 2, 1, 20, 30, 32, F32))
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    grads = torch.autograd.grad(triton_flash.attention(q, k, v, causal=True, scale=0.2,
                                                       window=29), (q, k, v), dout)
    ref = reference_gradients(q, k, v, dout, causal=True, scale=0.2, dtype=torch.float64)[1:]
    for got, want in zip(grads, ref):
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-5


@pytest.mark.parametrize("ragged", [False, True])
def test_the_backward_gets_the_features_by_keyword(monkeypatch: pytest.MonkeyPatch,
                                                   ragged: bool) -> None:
    monkeypatch.setattr(support, "BACKWARD_FEATURES", frozenset({"window", "softcap", "ragged"}))
    seen = {}

    def attention_backward(q, k, v, out, lse, dout, **kwargs):
        seen.update(kwargs, lse=lse, q=q)
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    monkeypatch.setattr(triton_flash_bwd, "attention_backward", attention_backward)
    inputs = inputs_of(case(window=5, softcap=7.0, ragged=RAGGED if ragged else None), True)
    out = triton_flash.prepare(inputs)()
    torch.autograd.grad(out, inputs.tensors, torch.ones_like(out))
    assert seen["window"] == 5 and seen["softcap"] == 7.0 and seen["causal"] is True
    if ragged:
        assert seen["cu_seqlens"] is inputs.cu_seqlens and seen["max_seqlen"] == 40
        assert seen["lse"].shape == (4, sum(inputs.seq_lens))  # (H, T)
    else:
        assert "cu_seqlens" not in seen and seen["lse"].shape == (2, 4, 40)


def test_tuning_keys_name_the_features_and_keep_the_dense_key() -> None:
    dense = tuning_key("H200", 128, torch.bfloat16, True, 4096, 4096, "tf32")
    assert dense == f"triton_flash.fwd|H200|triton {__import__('triton').__version__}|D128|" \
                    "bfloat16|causal|N4096|Nk4096"
    assert tuning_key("H200", 128, torch.bfloat16, True, 4096, 4096, "tf32", window=1000,
                      softcap=50.0, varlen=True) == dense + "|W1024|softcap|varlen"
    assert tuning_key("H200", 64, torch.float32, False, 10, 20, "ieee", window=3).endswith(
        "|ieee|W16")


@pytest.mark.parametrize(("changes", "status", "kernel"), [
    ({"window": 8, "softcap": 5.0}, "ok", "triton-flash"),
    ({"ragged": RAGGED, "window": 8}, "ok", "triton-flash-varlen"),
    ({"seq_len": 2, "kv_len": 300, "softcap": 9.0}, "ok", "triton-decode"),
    ({"mode": Mode.BWD, "window": 8}, "ok", "triton-flash"),
])
def test_a_sweep_runs_the_features_on_our_kernels(changes: dict, status: str, kernel) -> None:
    row = measure_case(case(**changes), torch.device("cpu"), FAST)
    assert row["status"] == status, row["error"]
    assert row["resolved_backend"] == kernel
    if status == "ok":
        assert row["rel_err"] < 1e-5
    else:
        assert row["error"] == "backward of a sliding window: not yet"
