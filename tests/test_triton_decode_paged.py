"""The decode kernel's window, softcap, per-sequence cache lengths and paged KV cache against a
float64 reference built from flashbench's own masks and cap (flashbench.measure.masks)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernel_inputs import (BF16, DEVICE, DTYPES, F16, F32, INTERPRET, TOLERANCES, LaunchSpy,
                           reference_and_sdpa_error, relative_error)

from flashbench.core.cases import FEATURES as CASE_FEATURES
from flashbench.kernels import triton_decode
from flashbench.kernels.triton_decode import (FEATURES, choose_num_splits, decode_forward,
                                              unsupported_reason)
from flashbench.measure.masks import apply_softcap, keep_mask

NAN, INF = float("nan"), float("inf")


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int], *,
              causal: bool, scale: float, window: int | None = None,
              softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (out, lse) on the host, each sequence over its first ``lengths[b]`` keys of the
    dense k, v (computed on their device)."""
    group = q.shape[1] // k.shape[1]
    outs, lses = [], []
    for b, n_k in enumerate(lengths):
        qb = q[b].double()
        kb, vb = (t[b, :, :n_k].double().repeat_interleave(group, 0) for t in (k, v))
        s = apply_softcap(qb @ kb.transpose(-1, -2) * scale, softcap)
        keep = keep_mask(q.shape[2], n_k, causal=causal, window=window, device=q.device)
        if keep is not None:
            s = s.masked_fill(~keep, -INF)
        outs.append((torch.softmax(s, -1) @ vb).cpu())
        lses.append(torch.logsumexp(s, -1).cpu())
    return torch.stack(outs), torch.stack(lses)


def random_cache(b: int, h: int, hkv: int, n: int, cap: int, d: int, dtype: torch.dtype,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)
                 for shape in ((b, h, n, d), (b, hkv, cap, d), (b, hkv, cap, d)))


def visible(lengths: list[int], cap: int, n: int, window: int | None) -> torch.Tensor:
    """(B, cap) booleans: the keys [L - n - window, L) that any query of a sequence may see."""
    j = torch.arange(cap)
    lens = torch.tensor(lengths)[:, None]
    lo = lens - n - window if window is not None else torch.zeros_like(lens)
    return (j >= lo) & (j < lens)


def poisoned(t: torch.Tensor, keep: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of dense (B, Hkv, cap, D) ``t`` with ``value`` at every key ``keep`` leaves out."""
    return t.masked_fill(~keep.to(t.device)[:, None, :, None], value)


def paged(k: torch.Tensor, v: torch.Tensor, page_size: int, keep: torch.Tensor | None = None,
          value: float = NAN, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense (B, Hkv, cap, D) k, v scattered into pools (pages, page_size, Hkv, D) by a random
    block table over a pool with spare pages. Spare pages, slots past the cache, and keys
    ``keep`` leaves out hold ``value``."""
    batch, kv_heads, cap, d = k.shape
    per_seq = -(-cap // page_size)
    pages = batch * per_seq + max(3, batch * per_seq // 2)
    gen = torch.Generator().manual_seed(seed)
    table = torch.randperm(pages, generator=gen)[:batch * per_seq].view(batch, per_seq)

    def pool(t: torch.Tensor) -> torch.Tensor:
        if keep is not None:
            t = poisoned(t, keep, value)
        whole = torch.full((batch, kv_heads, per_seq * page_size, d), value, dtype=t.dtype,
                           device=t.device)
        whole[:, :, :cap] = t
        out = torch.full((pages, page_size, kv_heads, d), value, dtype=t.dtype, device=t.device)
        out[table.reshape(-1).to(t.device)] = whole.view(
            batch, kv_heads, per_seq, page_size, d).permute(0, 2, 3, 1, 4).reshape(
            -1, page_size, kv_heads, d)
        return out

    return pool(k), pool(v), table.to(device=k.device, dtype=torch.int32)


def seqlens(lengths: list[int]) -> torch.Tensor:
    return torch.tensor(lengths, dtype=torch.int32, device=DEVICE)


def assert_close_to_reference(out: torch.Tensor, lse: torch.Tensor,
                              ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    out_tol, lse_tol = TOLERANCES[out.dtype]
    rel = ((out.cpu().double() - ref[0]).norm() / ref[0].norm()).item()
    lse_err = (lse.cpu().double() - ref[1]).abs().max().item()
    assert rel < out_tol, f"relative output error {rel:.3e} >= {out_tol:.0e}"
    assert lse_err < lse_tol, f"max lse error {lse_err:.3e} >= {lse_tol:.0e}"


def run_case(b, h, hkv, n, cap, d, dtype, *, page, lengths, window=None, softcap=None,
             causal=True, splits=None, scale=None, poison=None, fused=True) -> None:
    """The kernel on a paged (page) or dense (page None) cache against the reference; with
    ``poison``, every key no query may see holds it."""
    q, k, v = random_cache(b, h, hkv, n, cap, d, dtype)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    keep = visible(lengths or [cap] * b, cap, n, window) if poison is not None else None
    extra = dict(window=window, softcap=softcap, num_splits=splits, fused_combine=fused,
                 cache_seqlens=None if lengths is None else seqlens(lengths))
    if page is None:
        kk, vv = (k, v) if keep is None else (poisoned(k, keep, poison), poisoned(v, keep, poison))
        out, lse = decode_forward(q, kk, vv, causal=causal, scale=scale, **extra)
    else:
        pk, pv, table = paged(k, v, page, keep, NAN if poison is None else poison)
        out, lse = decode_forward(q, pk, pv, causal=causal, scale=scale, block_table=table,
                                  **extra)
    ref = reference(q, k, v, lengths or [cap] * b, causal=causal, scale=scale, window=window,
                    softcap=softcap)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3]
    assert_close_to_reference(out, lse, ref)


@pytest.mark.parametrize(
    ("b", "h", "hkv", "n", "cap", "d", "dtype", "page", "lengths", "window", "softcap", "splits"),
    [
        pytest.param(2, 8, 2, 1, 300, 64, BF16, 16, [300, 171], None, None, 3,
                     id="page16-gqa-decode-lengths"),
        pytest.param(2, 8, 2, 4, 300, 64, F32, 16, [300, 100], 40, None, 3,
                     id="page16-spec4-window"),
        pytest.param(1, 4, 1, 16, 320, 64, F16, 64, None, None, 3.0, 2,
                     id="page64-mqa-spec16-softcap"),
        pytest.param(2, 2, 2, 4, 300, 128, F32, 64, [300, 65], 20, 5.0, 4,
                     id="page64-mha-window-softcap"),
        pytest.param(1, 8, 2, 4, 256, 64, BF16, 32, None, 7, 2.0, None,
                     id="page32-tile-is-page"),
        pytest.param(2, 4, 2, 1, 300, 64, F32, 48, [290, 49], None, 2.0, 3,
                     id="page48-not-a-power-of-two"),
        pytest.param(1, 8, 2, 1, 512, 32, F16, 256, [505], 100, None, 2, id="page256"),
        pytest.param(3, 4, 2, 4, 272, 64, F32, 16, [4, 20, 272], 3, 4.0, 5,
                     id="page16-lengths-down-to-seq-len"),
        pytest.param(2, 8, 2, 16, 300, 64, BF16, 64, [300, 31], 10, None, 3,
                     id="page64-spec16-window-under-seq-len"),
    ],
)
def test_paged_matches_reference(b, h, hkv, n, cap, d, dtype, page, lengths, window, softcap,
                                 splits) -> None:
    run_case(b, h, hkv, n, cap, d, dtype, page=page, lengths=lengths, window=window,
             softcap=softcap, splits=splits, scale=None if softcap is None else 5 / math.sqrt(d))


@pytest.mark.parametrize("page", [16, 64])
def test_paged_not_causal(page: int) -> None:
    run_case(2, 4, 2, 4, 300, 64, F32, page=page, lengths=[300, 9], causal=False, splits=3)


@pytest.mark.parametrize(("page", "block_n", "gather"), [
    (16, 32, True), (16, 64, True), (16, 128, True), (64, 32, False), (64, 64, False),
    (64, 128, False), (256, 128, False), (96, 64, True)])
def test_tile_and_page_relations(monkeypatch: pytest.MonkeyPatch, page: int, block_n: int,
                                 gather: bool) -> None:
    # The GPU's key tiles against pages smaller, equal and larger: a page under the tile is
    # gathered (or, a power of two from 32 keys, read as a tile of its own size); a page of
    # whole tiles is one descriptor load per tile.
    monkeypatch.setattr(triton_decode, "_launch_config", lambda *_: (block_n, 4, 4))
    spy = LaunchSpy(triton_decode._split_kv_kernel)
    monkeypatch.setattr(triton_decode, "_split_kv_kernel", spy)
    run_case(2, 4, 1, 4, 400, 64, F32, page=page, lengths=[400, 150], window=70, splits=2)
    (launch,) = spy.launches
    assert launch["GATHER"] is gather and launch["PAGED"] and launch["PAGE_SIZE"] == page
    assert launch["BLOCK_N"] == (min(block_n, page) if not gather else block_n)


@pytest.mark.parametrize(("page", "window", "softcap"),
                         [(16, None, None), (16, 50, 3.0), (64, None, 2.0), (64, 33, None)])
def test_paged_equals_the_dense_kernel_on_the_gathered_cache(page, window, softcap) -> None:
    q, k, v = random_cache(2, 8, 2, 4, 300, 64, BF16)
    lengths = seqlens([300, 130])
    pk, pv, table = paged(k, v, page)
    args = dict(causal=True, scale=0.125, window=window, softcap=softcap, num_splits=3,
                cache_seqlens=lengths)
    out, lse = decode_forward(q, pk, pv, block_table=table, **args)
    dense_out, dense_lse = decode_forward(q, k, v, **args)
    if INTERPRET:  # the same tiles and the same arithmetic
        assert torch.equal(out, dense_out) and torch.equal(lse, dense_lse)
    torch.testing.assert_close(out, dense_out, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(lse, dense_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [0, 5, 8, 9, 10, 31, 32, 33, 42, 100, 295, 296, 299])
def test_window_edges(window: int) -> None:
    # 300 keys, 4 queries, 32-key tiles: 0 sees only the diagonal; 8 and 9 start the first
    # row's window on a tile and just before one (keys 288, 287); 10 and 42 put the key just
    # before the last row's window on one (287, 255), so that the tile from there on must be
    # masked; under, at and over a tile; windows reaching key 0 for some rows or all.
    run_case(1, 4, 2, 4, 300, 64, F32, page=None, lengths=None, window=window, splits=3)


@pytest.mark.parametrize("beyond", [0, 1, 10**9])
@pytest.mark.parametrize("page", [None, 16])
def test_a_window_holding_the_cache_is_plain_causal(monkeypatch: pytest.MonkeyPatch,
                                                     beyond: int, page: int | None) -> None:
    spy = LaunchSpy(triton_decode._split_kv_kernel)
    monkeypatch.setattr(triton_decode, "_split_kv_kernel", spy)
    cap = 300 if page is None else 304  # a whole number of pages: the capacity
    q, k, v = random_cache(1, 4, 2, 4, cap, 64, F32)
    kv = dict(k=k, v=v) if page is None else dict(zip(("k", "v", "block_table"),
                                                      paged(k, v, page)))
    windowed = decode_forward(q, causal=True, scale=0.125, window=cap + beyond, num_splits=3,
                              **kv)
    causal = decode_forward(q, causal=True, scale=0.125, num_splits=3, **kv)
    assert torch.equal(windowed[0], causal[0]) and torch.equal(windowed[1], causal[1])
    assert [launch["WINDOW"] for launch in spy.launches] == [False, False]


class GridSpy(LaunchSpy):
    """LaunchSpy that also records each launch's grid."""

    def __getitem__(self, grid):
        self.grids = getattr(self, "grids", []) + [grid]
        return super().__getitem__(grid)


def test_splits_cover_only_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = GridSpy(triton_decode._split_kv_kernel)
    monkeypatch.setattr(triton_decode, "_split_kv_kernel", spy)
    # A 4097-key cache would take 8 splits; a 600-key window takes what 601 keys take.
    q, k, v = random_cache(1, 4, 2, 1, 4097, 32, F32)
    keep = visible([4097], 4097, 1, 600)
    out, lse = decode_forward(q, poisoned(k, keep, NAN), poisoned(v, keep, NAN), causal=True,
                              scale=0.2, window=600)
    assert spy.grids[0] == (choose_num_splits(1, 2, 601, triton_decode._DEFAULT_SM_COUNT), 2)
    assert spy.grids[0][0] < choose_num_splits(1, 2, 4097, triton_decode._DEFAULT_SM_COUNT)
    assert_close_to_reference(out, lse, reference(q, k, v, [4097], causal=True, scale=0.2,
                                                  window=600))


@pytest.mark.parametrize("softcap", [2.0, 3.5, 5.0])
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_softcap(softcap: float, dtype: torch.dtype) -> None:
    # Scores of about 5 (scale 5/sqrt(D) on unit normals): the cap changes the result.
    run_case(1, 8, 2, 4, 300, 64, dtype, page=None, lengths=None, softcap=softcap, splits=2,
             scale=5 / math.sqrt(64))
    q, k, v = random_cache(1, 8, 2, 4, 300, 64, F32)
    capped = reference(q, k, v, [300], causal=True, scale=0.625, softcap=softcap)[0]
    plain = reference(q, k, v, [300], causal=True, scale=0.625)[0]
    assert ((capped - plain).norm() / plain.norm()).item() > 0.05


@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
def test_softcap_saturates_without_overflow() -> None:
    # Scores in the thousands: exp2 overflows to inf inside the tanh, which must give ±c.
    run_case(1, 4, 2, 4, 300, 64, F32, page=16, lengths=[300], softcap=4.0, splits=2,
             scale=400.0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("poison", [NAN, INF])
@pytest.mark.parametrize(("page", "window", "lengths"), [
    (16, None, [300, 77]), (16, 37, [300, 77]), (64, 37, [300, 77]), (64, None, [290, 5]),
    (None, 37, None), (None, 10, [300, 150])])
def test_reads_nothing_outside_the_cache(poison: float, page: int | None, window: int | None,
                                         lengths: list[int] | None) -> None:
    # Spare pages, slots past each sequence's length, and keys before its window hold NaN or
    # inf: any of them read into the result would make it non-finite.
    run_case(2, 4, 2, 4, 300, 64, F16, page=page, lengths=lengths, window=window, splits=4,
             poison=poison)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two-launch"])
def test_short_sequences_leave_splits_empty(fused: bool) -> None:
    # Eight splits of a 608-key cache: the 1- and 16-key sequences use one, the rest are empty
    # (and, fused, still count: the last of them combines).
    run_case(4, 4, 2, 1, 608, 64, F32, page=16, lengths=[608, 16, 300, 1], splits=8,
             poison=NAN, fused=fused)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two-launch"])
def test_splits_before_a_window_are_empty(fused: bool) -> None:
    # Three 32-key splits cover a 60-key window and 4 queries from its first tile; the 30-key
    # sequence's window starts at key 0, so its second and third splits see nothing.
    run_case(2, 4, 2, 4, 300, 64, F32, page=None, lengths=[300, 30], window=60, splits=4,
             poison=NAN, fused=fused)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two-launch"])
def test_an_empty_cache_gives_zero_and_minus_inf(fused: bool) -> None:
    q, k, v = random_cache(2, 4, 2, 1, 300, 64, F32)
    pk, pv, table = paged(k, v, 64)
    out, lse = decode_forward(q, pk, pv, causal=False, scale=0.1, block_table=table,
                              cache_seqlens=seqlens([0, 300]), num_splits=2,
                              fused_combine=fused)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and (lse[0] == -INF).all()
    ref = reference(q[1:], k[1:], v[1:], [300], causal=False, scale=0.1)
    assert_close_to_reference(out[1:], lse[1:], ref)


@pytest.mark.parametrize(("head_dim", "dtype"), [
    (d, dt) for d in (32, 64, 96, 128, 256) for dt in DTYPES if not (d == 256 and dt == F32)])
def test_every_head_dim_and_dtype(head_dim: int, dtype: torch.dtype) -> None:
    page = 16 if (head_dim + DTYPES.index(dtype)) % 2 else 64
    run_case(2, 4, 2, 2, 300, head_dim, dtype, page=page, lengths=[300, 90], window=45,
             softcap=3.0, splits=2, scale=4 / math.sqrt(head_dim))


def test_a_dense_launch_turns_every_feature_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # What keeps the dense kernel's compiled code the one it was (scripts/inspect_decode.py).
    spy = LaunchSpy(triton_decode._split_kv_kernel)
    monkeypatch.setattr(triton_decode, "_split_kv_kernel", spy)
    q, k, v = random_cache(1, 4, 2, 4, 300, 64, F32)
    decode_forward(q, k, v, causal=True, scale=0.125, num_splits=2)
    decode_forward(q, k, v, causal=True, scale=0.125, num_splits=2, window=100)
    off = {"WINDOW": False, "SOFTCAP": False, "SEQLENS": False, "PAGED": False, "GATHER": False}
    assert {name: spy.launches[0][name] for name in off} == off
    assert spy.launches[1]["WINDOW"] and not spy.launches[1]["PAGED"]


def test_features() -> None:
    assert FEATURES == frozenset({"window", "softcap", "paged"})
    assert FEATURES <= set(CASE_FEATURES)


SHAPE = dict(heads=32, kv_heads=8, seq_len=4, kv_len=8192, head_dim=128, dtype=torch.bfloat16,
             causal=True)


@pytest.mark.parametrize(("override", "needle"), [
    ({"window": -1}, "negative"),
    ({"window": 128, "causal": False}, "needs causal"),
    ({"softcap": 0.0}, "positive finite"),
    ({"softcap": -3.0}, "positive finite"),
    ({"softcap": INF}, "positive finite"),
    ({"softcap": NAN}, "positive finite"),
    ({"page_size": 0}, "positive"),
    ({"page_size": 16, "seq_len": 32}, "no paged prefill"),
    ({"page_size": 16, "seq_len": 1, "kv_len": 100}, "kv_len 100"),
    ({"page_size": 16, "head_dim": 80}, "head_dim"),
])
def test_unsupported_reason_rejects(override: dict, needle: str) -> None:
    reason = unsupported_reason(**(SHAPE | override))
    assert reason is not None and needle in reason and "\n" not in reason


@pytest.mark.parametrize("override", [
    {"window": 0}, {"window": 4096}, {"window": 10**9}, {"softcap": 50.0},
    {"page_size": 16}, {"page_size": 256}, {"page_size": 48},
    {"page_size": 16, "window": 4096, "softcap": 50.0, "seq_len": 16},
    {"page_size": 256, "kv_heads": 32, "seq_len": 1}, {"page_size": 64, "dtype": torch.float32}])
def test_unsupported_reason_accepts(override: dict) -> None:
    assert unsupported_reason(**(SHAPE | override)) is None


def test_decode_forward_refuses_bad_arguments() -> None:
    q, k, v = random_cache(2, 4, 2, 1, 300, 64, F32)
    pk, pv, table = paged(k, v, 64)
    with pytest.raises(ValueError, match="needs causal"):
        decode_forward(q, k, v, causal=False, scale=0.1, window=10)
    with pytest.raises(ValueError, match="block_table must be int32"):
        decode_forward(q, pk, pv, causal=True, scale=0.1, block_table=table.long())
    with pytest.raises(ValueError, match="cache_seqlens must be int32"):
        decode_forward(q, pk, pv, causal=True, scale=0.1, block_table=table,
                       cache_seqlens=seqlens([300]))
    with pytest.raises(ValueError, match="incompatible shapes"):
        decode_forward(q, pk[..., :32], pv[..., :32], causal=True, scale=0.1, block_table=table)
    with pytest.raises(ValueError, match="incompatible shapes"):
        decode_forward(q, pk, pv, causal=True, scale=0.1, block_table=table[:1])
    with pytest.raises(ValueError, match="no paged prefill"):
        decode_forward(torch.zeros(2, 4, 20, 64), pk, pv, causal=True, scale=0.1,
                       block_table=table)


# Compiled for sm_90 on this machine (triton ships ptxas): what the interpreter cannot show.
@pytest.mark.skipif(not INTERPRET, reason="the GPU tests run the kernels themselves")
def test_paged_variants_compile_for_sm90_with_their_loads() -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "inspect_decode.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(script), "paged256-all", "paged16-all"],
                          capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0 and "ptxas" in done.stderr:
        pytest.skip(f"cannot compile for sm_90 here: {done.stderr.splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s*\|\s*", line.strip("| "))
                                              for line in done.stdout.splitlines()[2:])}
    # regs, stack, smem KB, UTMALDG, LDGSTS, ...: no spills, and shared memory for two
    # programs per SM; pages of whole tiles arrive by the copy engine, small pages by cp.async.
    for name, (regs, stack, smem, tma, cp_async, *_) in rows.items():
        assert int(stack) == 0 and int(smem) <= 113, (name, rows[name])
    assert int(rows["paged256-all"][3]) > 0
    assert int(rows["paged16-all"][4]) > 0


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize(("page", "window", "softcap", "n"), [
    (16, None, None, 1), (256, None, None, 1), (16, 4096, 50.0, 4), (256, 4096, 50.0, 16),
    (256, None, 50.0, 4), (16, 4096, None, 1)])
def test_gpu_paged_at_realistic_sizes(page: int, window: int | None, softcap: float | None,
                                      n: int) -> None:
    from flashbench.core.cases import Case, Mode
    from flashbench.measure.inputs import dense_kv, make_inputs
    from flashbench.measure.reference import reference_attention

    case = Case(backend="triton", mode=Mode.FWD, batch=8, heads=32, kv_heads=8, seq_len=n,
                kv_len=32768, head_dim=128, dtype="bf16", causal=True, window=window,
                softcap=softcap, page_size=page)
    inputs = make_inputs(case, torch.device("cuda"))
    args = dict(causal=True, scale=inputs.scale, window=window, softcap=softcap)
    out, _ = decode_forward(inputs.q, inputs.k, inputs.v, block_table=inputs.block_table,
                            cache_seqlens=inputs.cache_seqlens, **args)
    k, v = dense_kv(inputs)
    ref = reference_attention(inputs.q, k, v, dtype=torch.float32, **args)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    assert err < TOLERANCES[BF16][0], f"relative output error {err:.3e}"
    dense_out, _ = decode_forward(inputs.q, k.contiguous(), v.contiguous(), **args)
    torch.testing.assert_close(out, dense_out, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize(("page", "window", "softcap"), [
    (16, None, None), (256, None, 50.0), (16, 4096, 50.0), (256, 4096, None)])
def test_gpu_paged_with_per_sequence_lengths(page: int, window: int | None,
                                             softcap: float | None) -> None:
    # Lengths from one page to the whole cache, on tile and page edges and off them.
    lengths = [32768, 16, 17, 4095, 4096, 20000, 32767, 100]
    q, k, v = random_cache(8, 32, 8, 16, 32768, 128, BF16, seed=page)
    pk, pv, table = paged(k, v, page, visible(lengths, 32768, 16, window), NAN)
    out, lse = decode_forward(q, pk, pv, causal=True, scale=1 / math.sqrt(128), window=window,
                              softcap=softcap, block_table=table, cache_seqlens=seqlens(lengths))
    ref = reference(q, k, v, lengths, causal=True, scale=1 / math.sqrt(128), window=window,
                    softcap=softcap)
    assert_close_to_reference(out, lse, ref)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize("page", [16, 256])
def test_gpu_every_paged_tuning_candidate_within_twice_sdpa(page: int) -> None:
    # What the tuner may pick for a paged cache (gathered pages of 16, tiles inside pages of
    # 256), combined in one launch or two: all as accurate as SDPA's kernel on the dense cache.
    q, k, v = random_cache(1, 32, 8, 1, 32768, 128, BF16, seed=page)
    pk, pv, table = paged(k, v, page)
    scale = 1 / math.sqrt(128)
    ref, _, sdpa_err = reference_and_sdpa_error(q, k, v, causal=False, scale=scale)
    for config in triton_decode.decode_candidates(q, 8, 32768, page, None):
        for fused in (True, False):
            out, _ = decode_forward(q, pk, pv, causal=False, scale=scale, block_table=table,
                                    config=config, fused_combine=fused)
            err = relative_error(out, ref)
            assert err <= 2 * sdpa_err, f"{config}, fused {fused}: {err:.3e} vs {sdpa_err:.3e}"
