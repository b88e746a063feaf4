"""--shard I/N: parsing, and the partition's properties (every case once, whole groups, balanced, the same everywhere)."""

import json
import os
import subprocess
import sys

import pytest

from flashbench.core.cases import Case, Mode
from flashbench.core.config import SweepConfig
from flashbench.core.grid import expand_cases
from flashbench.core.errors import UserError
from flashbench.sweep.schedule import (case_seconds, comparison_groups, group_micros, longest_first,
                                 partition)
from flashbench.sweep.shard import Shard, parse_shard, shard_cases

# 3 seq_len x 2 head_dim x 2 causal = 12 shapes of very different sizes, 4 backends each.
CONFIG = SweepConfig(backends=["triton", "sdpa-flash", "sdpa-math", "naive"],
                     seq_len=[512, 2048, 8192], head_dim=[64, 128], causal=[False, True])
CASES = expand_cases(CONFIG)
TIMING = CONFIG.timing


@pytest.mark.parametrize("text, index, count", [
    ("1/4", 1, 4), (" 4 / 4 ", 4, 4), ("1/1", 1, 1), ("17/100", 17, 100)])
def test_parse_shard_counts_from_one(text, index, count):
    assert parse_shard(text) == Shard(index, count)
    assert str(parse_shard(text)) == f"{index}/{count}"
    assert Shard.from_meta(parse_shard(text).to_meta()) == Shard(index, count)


@pytest.mark.parametrize("text, message", [
    ("0/4", "--shard 0/4: the shard must be between 1 and 4 (shards count from 1), got 0"),
    ("5/4", "the shard must be between 1 and 4"),
    ("-1/4", "the shard must be between 1 and 4"),
    ("1/0", "--shard 1/0: the number of shards must be between 1 and 100000, got 0"),
    ("1/100001", "the number of shards must be between 1 and 100000"),
    ("2", "--shard: '2' is not I/N (the I-th of N shards, counted from 1, e.g. 1/4)"),
    ("1-4", "is not I/N"), ("a/b", "is not I/N"), ("", "is not I/N"), ("1/4/2", "is not I/N"),
])
def test_malformed_shards_are_bad_input(text, message):
    with pytest.raises(UserError) as e:
        parse_shard(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_estimate_ranks_cases_as_their_work_does():
    def case(**kw):
        fields = dict(backend="triton", mode=Mode.FWD, batch=4, heads=32, kv_heads=32,
                      seq_len=4096, kv_len=4096, head_dim=128, dtype="bf16", causal=False)
        return Case(**(fields | kw))

    base = case_seconds(case(), TIMING)
    assert case_seconds(case(seq_len=8192, kv_len=8192), TIMING) > base
    assert case_seconds(case(causal=True), TIMING) < base  # half the pairs
    # Materializing the N×N scores makes naive and SDPA-math the long cases of a shape.
    assert case_seconds(case(backend="naive"), TIMING) > 1.5 * base
    assert case_seconds(case(backend="sdpa-math"), TIMING) > base
    assert case_seconds(case(mode=Mode.FWD_BWD), TIMING) > base
    # Sampling stops at the budget: a case far longer than the budget costs its min_samples.
    huge = case(backend="naive", batch=64, seq_len=65536, kv_len=65536)
    kernel = case_seconds(huge, _with(min_samples=1)) - case_seconds(huge, _with(min_samples=0))
    assert kernel > TIMING.budget_ms / 1e3  # one sample alone outlasts the budget
    small = case(batch=1, heads=1, seq_len=128, kv_len=128)
    assert case_seconds(small, _with(budget_ms=50)) == \
        pytest.approx(case_seconds(small, _with(budget_ms=5000)))  # never reached
    long = case(backend="naive", seq_len=12288, kv_len=12288)  # 0.19 s a sample: fills it
    assert case_seconds(long, _with(min_samples=3, budget_ms=2000)) \
        - case_seconds(long, _with(min_samples=3)) == pytest.approx(1.0)


def _with(**changes):
    """The sweep's timing with some fields changed (unvalidated: min_samples=0 isolates a term)."""
    return TIMING.model_copy(update=changes)


def test_groups_are_shapes_and_longest_come_first():
    groups = comparison_groups(CASES)
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)
    assert all(len({c.shape_key for c in g}) == 1 for g in groups)
    ordered = longest_first(groups, TIMING)
    costs = [group_micros(g, TIMING) for g in ordered]
    assert costs == sorted(costs, reverse=True)
    assert ordered[0][0].seq_len == 8192 and not ordered[0][0].causal
    assert ordered[-1][0].seq_len == 512


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 12, 15])
def test_partition_puts_every_case_in_one_shard_whole_groups_balanced(parts):
    shards = [shard_cases(CASES, Shard(i, parts), TIMING) for i in range(1, parts + 1)]
    flat = [c for s in shards for c in s]
    assert sorted(flat, key=CASES.index) == CASES and len(flat) == len(set(flat))
    for s in shards:
        assert s == [c for c in CASES if c in s]  # the config's order within a shard
    owner = {c.shape_key: i for i, s in enumerate(shards) for c in s}
    assert all(c in shards[owner[c.shape_key]] for c in CASES)  # whole groups
    # More shards than groups: one group each, the rest empty (a valid, empty run).
    assert sum(1 for s in shards if s) == min(parts, 12)
    # The longest-processing-time bound: no shard beyond the mean by more than its longest group.
    loads = [sum(group_micros(g, TIMING) for g in comparison_groups(s)) for s in shards]
    longest = max(group_micros(g, TIMING) for g in comparison_groups(CASES))
    assert max(loads) <= sum(loads) / parts + longest
    assert shards == [shard_cases(CASES, Shard(i, parts), TIMING) for i in range(1, parts + 1)]


def test_balance_beats_dealing_in_turn():
    """Four shards: one holds the 8192 full shapes with much else, not all the long groups."""
    groups = comparison_groups(CASES)
    loads = [sum(group_micros(g, TIMING) for g in part)
             for part in partition(groups, 4, TIMING)]
    in_turn = [sum(group_micros(g, TIMING) for g in groups[i::4]) for i in range(4)]
    assert max(loads) / min(loads) < max(in_turn) / min(in_turn)
    assert max(loads) <= 1.34 * sum(loads) / 4  # within 4/3 of a perfect split here


SUBPROCESS = """
import json, sys
from flashbench.core.config import SweepConfig
from flashbench.core.grid import expand_cases
from flashbench.sweep.shard import Shard, shard_cases
cfg = SweepConfig.model_validate(json.loads(sys.argv[1]))
print(json.dumps([[c.to_dict() for c in shard_cases(expand_cases(cfg), Shard(i, 5),
                                                    cfg.timing)]
                  for i in range(1, 6)]))
"""


def test_the_split_is_the_same_in_every_process():
    """Another interpreter, another hash seed: the same shards (nothing depends on set order)."""
    here = [[c.to_dict() for c in shard_cases(CASES, Shard(i, 5), TIMING)] for i in range(1, 6)]
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", SUBPROCESS,
                              json.dumps(CONFIG.model_dump(mode="json"))],
                             env=os.environ | {"PYTHONHASHSEED": seed}, capture_output=True,
                             text=True, check=True)
        assert json.loads(out.stdout) == here
