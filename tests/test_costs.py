"""The cost model against hand-computed FLOP and byte counts."""

import pytest

from flashbench.core import costs, registry
from flashbench.core.cases import Case, Mode


def case(**kw):
    base = dict(backend="triton", mode=Mode.FWD, batch=4, heads=32, kv_heads=32, seq_len=4096,
                kv_len=4096, head_dim=128, dtype="bf16", causal=False)
    return Case(**(base | kw))


@pytest.mark.parametrize("n, nk, causal, pairs", [
    (4, 4, False, 16),
    (4, 4, True, 10),        # 1 + 2 + 3 + 4
    (2, 5, True, 4 + 5),     # diagonal aligned to the end: rows see 4 and 5 keys
    (1, 7, True, 7),         # decode: the one query sees the whole cache
    (5, 2, True, 1 + 2),     # only the last two rows see any key
    (3, 8, False, 24),
])
def test_attended_pairs_by_hand(n, nk, causal, pairs):
    assert costs.attended_pairs(n, nk, causal) == pairs


@pytest.mark.parametrize("n, nk", [(1, 1), (7, 7), (13, 40), (40, 13), (1, 300), (64, 64)])
def test_attended_pairs_matches_counting_the_mask(n, nk):
    brute = sum(1 for i in range(n) for j in range(nk) if j <= i + nk - n)
    assert costs.attended_pairs(n, nk, True) == brute


def test_forward_flops_full_and_causal():
    # 4·B·H·N²·D for the targets' headline shape: 4·4·32·4096²·128
    assert costs.flops(case()) == 1_099_511_627_776
    # causal counts N(N+1)/2 pairs, a little over half
    assert costs.flops(case(causal=True)) == 4 * 4 * 32 * 128 * (4096 * 4097 // 2)


def test_gqa_counts_query_heads_and_modes_scale():
    assert costs.flops(case(kv_heads=8)) == costs.flops(case())
    fwd = costs.flops(case())
    assert costs.flops(case(mode=Mode.BWD)) == int(2.5 * fwd)
    assert costs.flops(case(mode=Mode.FWD_BWD)) == int(3.5 * fwd)


def test_flash_bytes_read_qkv_write_o_and_lse():
    c = case(batch=1, heads=2, kv_heads=1, seq_len=10, kv_len=20, head_dim=8, dtype="fp16")
    q = o = 1 * 2 * 10 * 8 * 2
    k = v = 1 * 1 * 20 * 8 * 2
    lse = 1 * 2 * 10 * 4
    assert costs.hbm_bytes(c, "flash") == q + k + v + o + lse == 1360


def test_naive_bytes_count_every_pass_over_s_and_p():
    c = case(batch=1, heads=1, kv_heads=1, seq_len=4, kv_len=4, head_dim=2, dtype="bf16")
    io = 4 * (4 * 2 * 2)  # Q, K, V, O: 16 bytes each
    q_scaled = 2 * 16  # Q·scale read and written
    m = 16  # score elements
    passes = (2 * m            # S written in bf16
              + 2 * m + 4 * m  # S upcast to fp32
              + 4 * m + 4 * m  # softmax reads S, writes P
              + 4 * m + 2 * m  # P cast back to bf16
              + 2 * m)         # P·V reads P
    assert costs.hbm_bytes(c, "naive") == io + q_scaled + passes == 480
    # causal adds a read-modify-write of S and a read of the boolean mask
    causal = Case(**(c.to_dict() | {"causal": True, "mode": Mode.FWD}))
    assert costs.hbm_bytes(causal, "naive") == 480 + 2 * 2 * m + m


def test_naive_fp32_has_no_cast_passes():
    c = case(batch=1, heads=1, kv_heads=1, seq_len=4, kv_len=4, head_dim=2, dtype="fp32")
    io = 4 * (4 * 2 * 4)
    m = 16
    assert costs.hbm_bytes(c, "naive") == io + 2 * 32 + 4 * m + (4 * m + 4 * m) + 4 * m == 448


def test_traffic_grows_with_n_for_flash_and_n_squared_for_naive():
    small, big = case(seq_len=1024, kv_len=1024), case(seq_len=8192, kv_len=8192)
    assert costs.hbm_bytes(big, "flash") / costs.hbm_bytes(small, "flash") == pytest.approx(8, rel=0.01)
    assert costs.hbm_bytes(big, "naive") / costs.hbm_bytes(small, "naive") > 50  # 64 if all N²


def test_materialized_peak_and_algorithms():
    c = case(batch=1, heads=1, kv_heads=1, seq_len=1024, kv_len=1024, head_dim=64, dtype="bf16")
    # S and P in fp32 at once, plus the output
    assert costs.materialized_peak_bytes(c, "naive") == 8 * 1024 * 1024 + 1024 * 64 * 2
    assert costs.materialized_peak_bytes(c, "flash") == 0
    assert registry.algorithm_of("naive") == "naive"
    assert registry.algorithm_of("sdpa-math") == "math"
    assert registry.algorithm_of("sdpa-cudnn") == "flash"
    c = case(batch=1, heads=2, kv_heads=1, seq_len=10, kv_len=20, head_dim=8, dtype="fp16")
    q = 1 * 2 * 10 * 8 * 2
    kv = 1 * 1 * 20 * 8 * 2
    bwd = Case(**(c.to_dict() | {"mode": Mode.BWD}))
    fwd_bwd = Case(**(c.to_dict() | {"mode": Mode.FWD_BWD}))
    # read Q, O, dO, K, V and the LSE; write dQ, dK, dV
    assert costs.hbm_bytes(bwd, "flash") == 3 * q + 2 * kv + 2 * 10 * 4 + q + 2 * kv == 2640
    assert costs.hbm_bytes(bwd, "naive") == 2640 + 7 * 4 * (2 * 10 * 20)
    assert costs.hbm_bytes(fwd_bwd, "flash") == costs.hbm_bytes(c, "flash") + 2640
