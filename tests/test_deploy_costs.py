"""Windows, softcaps, ragged batches and paged caches: exact counts, seeded lengths, the grid."""

import itertools

import pytest

from flashbench.core import costs, ragged
from flashbench.core.cases import Case, Mode, case_features, missing_features
from flashbench.core.config import validate_config
from flashbench.core.errors import UserError
from flashbench.core.grid import expand_cases


def case(**kw):
    base = dict(backend="triton", mode=Mode.FWD, batch=2, heads=4, kv_heads=2, seq_len=64,
                kv_len=64, head_dim=32, dtype="bf16", causal=True)
    return Case(**(base | kw))


def brute_pairs(n, nk, causal, window):
    """The mask counted pair by pair, as flashbench.measure.masks defines it."""
    return sum(1 for i in range(n) for j in range(nk)
               if (not causal or j <= i + nk - n)
               and (window is None or j >= i + nk - n - window))


@pytest.mark.parametrize("n, nk, window", list(itertools.product(
    [1, 3, 16, 33], [1, 4, 16, 40, 100], [None, 0, 1, 5, 16, 39, 200])))
def test_window_pairs_match_counting_the_mask(n, nk, window):
    if n > nk:
        return
    assert costs.attended_pairs(n, nk, True, window) == brute_pairs(n, nk, True, window)


def test_window_flops_by_hand():
    # N = Nk = 8, window 2: rows see 1, 2, 3, 3, 3, 3, 3, 3 keys = 21 pairs (of causal's 36).
    c = case(batch=1, heads=1, kv_heads=1, seq_len=8, kv_len=8, head_dim=4, window=2)
    assert costs.flops(c) == 4 * 1 * 4 * 21
    assert costs.flops(c) < costs.flops(case(batch=1, heads=1, kv_heads=1, seq_len=8,
                                             kv_len=8, head_dim=4))
    # A window as long as the cache is plain causal; a softcap is no matrix product.
    assert costs.flops(case(window=64)) == costs.flops(case()) == costs.flops(case(softcap=30.0))


def test_ragged_counts_the_real_tokens_only():
    c = case(batch=3, seq_len=7, kv_len=7, ragged="lens(2,7,5)", causal=True, head_dim=8)
    assert c.seq_lens == (2, 7, 5) and c.tokens == 14
    pairs = 3 + 28 + 15  # n(n+1)/2 per sequence
    assert costs.flops(c) == 4 * 4 * 8 * pairs
    full = case(batch=3, seq_len=7, kv_len=7, ragged="lens(2,7,5)", causal=False, head_dim=8)
    assert costs.flops(full) == 4 * 4 * 8 * (4 + 49 + 25)
    # A fused kernel moves the real tokens: Q, O over 14 tokens and 4 heads, K, V over 2.
    e = 2
    flash = e * (2 * 14 * 4 * 8 + 2 * 14 * 2 * 8) + 4 * 14 * 4
    assert costs.hbm_bytes(c, "flash") == flash
    # A materializing one runs the batch padded to 7: more bytes than the dense 3×7 flash.
    assert costs.hbm_bytes(c, "naive") > costs.hbm_bytes(case(batch=3, seq_len=7, kv_len=7,
                                                              head_dim=8), "flash")


def test_paged_bytes_count_whole_pages_and_the_block_table():
    # 1000 keys in pages of 256: 4 pages (1024 keys) per sequence, K and V, 2 KV heads, D 32.
    c = case(batch=3, seq_len=1, kv_len=1000, page_size=256, causal=False, dtype="fp16")
    q_o = 2 * 3 * 1 * 4 * 32 * 2
    kv = 2 * 3 * 1024 * 2 * 32 * 2
    table = 4 * 3 * 4
    lse = 4 * 3 * 4
    assert costs.hbm_bytes(c, "flash") == q_o + kv + table + lse
    # A window reads the pages its last keys lie in: keys 995..999 of a 4-token window at
    # seq_len 1 touch one page.
    w = case(batch=1, seq_len=1, kv_len=1000, page_size=256, window=4, dtype="fp16")
    assert costs.keys_read(w) == 256
    # Gathering the cache first (SDPA, naive) reads the pages and writes the copy.
    assert costs.hbm_bytes(c, "math") > costs.hbm_bytes(
        case(batch=3, seq_len=1, kv_len=1000, causal=False, dtype="fp16"), "math")


def test_ragged_lengths_are_seeded_stable_and_bounded():
    spec = ragged.canonical({"dist": "lognormal", "mean": 2048, "max": 8192, "seed": 0})
    assert spec == "lognormal(mean=2048,max=8192,seed=0)"
    lens = ragged.lengths(spec, 64)
    # Pinned: a baseline of last year means the same lengths (random.Random's stream).
    assert lens[:6] == ragged.lengths(spec, 6)
    assert all(1 <= n <= 8192 for n in lens)
    assert 1500 < sum(lens) / len(lens) < 2600  # the mean asked for, before clipping
    assert ragged.lengths(spec, 4) == (1812, 1652, 945, 1211)
    uni = ragged.canonical({"dist": "uniform", "min": 100, "max": 200, "seed": 3})
    assert all(100 <= n <= 200 for n in ragged.lengths(uni, 200))
    assert ragged.canonical([3, 1, 2]) == "lens(3,1,2)"
    assert ragged.lengths("lens(3,1,2)", 99) == (3, 1, 2)
    # A run's meta.json keeps the spelling; a resume validates it again to the same text.
    assert ragged.canonical(spec) == spec and ragged.canonical("lens(3,1,2)") == "lens(3,1,2)"
    assert ragged.canonical(uni) == uni


@pytest.mark.parametrize("spec, words", [
    ([], "empty"), ([0, 5], "from 1"), ({"dist": "zipf"}, "dist must be"),
    ({"dist": "lognormal", "mean": 10, "max": 5}, "above max"),
    ({"dist": "lognormal", "mean": 10, "max": 50, "sigma": 2}, "unknown key"),
    ({"dist": "uniform", "mean": True, "max": 5}, "integer"), ("512", "not a ragged batch"),
    ("lognormal(garbage", "not a ragged batch"),
])
def test_bad_ragged_specs_are_refused(spec, words):
    with pytest.raises(ragged.RaggedError, match=words):
        ragged.canonical(spec)


def test_grid_skips_meaningless_combinations_and_refuses_unused_values():
    cfg = validate_config({"backends": ["naive"], "causal": [False, True], "window": [None, 8],
                           "mode": ["fwd", "bwd"], "page_size": [None, 16],
                           "seq_lens": [None, [5, 9]], "seq_len": 16, "kv_len": [32]}, "t")
    cases = expand_cases(cfg)
    assert all(c.causal for c in cases if c.window is not None)
    assert all(c.mode is Mode.FWD for c in cases if c.page_size is not None)
    assert not any(c.page_size and c.ragged for c in cases)
    lens = [c for c in cases if c.ragged]
    assert {(c.batch, c.seq_len, c.kv_len) for c in lens} == {(2, 9, 9)}
    for data, words in [({"window": 8}, "window needs causal"),
                        ({"page_size": 16, "mode": "bwd"}, "page_size needs mode fwd"),
                        ({"page_size": 16, "seq_lens": [[4, 5]]}, "do not combine")]:
        with pytest.raises(UserError, match=words):
            validate_config({"backends": ["naive"]} | data, "t")


def test_one_list_of_lengths_is_one_ragged_batch_and_distributions_follow_batch():
    one = validate_config({"backends": ["naive"], "seq_lens": [4, 9, 2]}, "t")
    assert one.seq_lens == ["lens(4,9,2)"]
    dist = validate_config({"backends": ["naive"], "batch": [2, 5], "seq_lens": {
        "dist": "uniform", "min": 8, "max": 16, "seed": 1}}, "t")
    assert sorted(c.batch for c in expand_cases(dist)) == [2, 5]


def test_sweeps_are_the_union_of_their_grids_and_flags_reach_every_part():
    from flashbench.core.config import load_config

    cases = expand_cases(load_config("llama-3.1-8b"))
    assert {c.heads for c in cases} == {32} and {c.kv_heads for c in cases} == {8}
    assert {c.page_size for c in cases} == {None, 16, 256}
    assert all(c.ragged for c in cases if c.page_size is None)
    narrowed = expand_cases(load_config("llama-3.1-8b", {"batch": [1]}))
    # --batch reaches the decode part; a ragged part draws one sequence.
    assert {c.batch for c in narrowed} == {1}
    with pytest.raises(UserError, match=r"sweeps\[0\]: 'timing' is not a grid key"):
        validate_config({"backends": ["naive"], "sweeps": [{"timing": {}}]}, "t")


def test_features_a_case_needs_and_what_is_missing():
    c = case(window=4, softcap=2.0, ragged="lens(3,4)", batch=2)
    assert case_features(c) == {"window", "softcap", "ragged"}
    assert missing_features(c, ("window",), "plugin x") == (
        "plugin x does not support a logit softcap, ragged batches")
    assert missing_features(case(), (), "x") is None


def test_old_rows_read_as_the_dense_case():
    old = {f: v for f, v in case().to_dict().items()
           if f not in ("window", "softcap", "ragged", "page_size")}
    assert Case.from_dict(old) == case()
    # A dense case keeps the seed it had before the fields existed (the crc32 of its dict
    # without them): the same inputs as before.
    import zlib

    assert case().seed == zlib.crc32(repr(old).encode())
    assert case(window=4).seed != case().seed
