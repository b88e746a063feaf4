"""Autotuning picks the fastest candidate once, skips broken ones, and remembers the choice."""

import json

import pytest

from flashbench.measure import tuning


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHBENCH_CACHE_DIR", str(tmp_path))
    return tmp_path


def tune(candidates, times, broken=()):
    calls = []

    def make(c):
        if c in broken:
            raise RuntimeError("out of resources: shared memory")
        return lambda: calls.append(c)

    def measure(fn):
        fn()
        return times[calls[-1]]

    return tuning.tune("gpu|D128", candidates, make, encode=lambda c: c, decode=lambda d: d,
                       measure=measure), calls


def test_fastest_wins_and_is_cached(cache_dir):
    (best, seconds), calls = tune(["a", "b", "c"], {"a": 2.0, "b": 1.0, "c": 3.0})
    assert best == "b" and seconds > 0 and calls == ["a", "b", "c"]
    assert json.loads((cache_dir / "tuning.json").read_text()) == {"gpu|D128": "b"}
    # A second sweep (or a second run) does not re-tune: same choice, no timing, zero seconds.
    (again, seconds), calls = tune(["a", "b", "c"], {"a": 0.1, "b": 9.0, "c": 9.0})
    assert again == "b" and seconds == 0.0 and calls == []


def test_broken_candidates_are_skipped_and_none_is_an_error():
    (best, _), _ = tune(["a", "b"], {"a": 1.0, "b": 2.0}, broken={"a"})
    assert best == "b"
    tuning_file = tuning.cache_path()
    tuning_file.unlink()
    with pytest.raises(RuntimeError, match="no launch configuration ran"):
        tune(["a"], {"a": 1.0}, broken={"a"})


def test_damaged_cache_means_tune_again(cache_dir):
    (cache_dir / "tuning.json").write_text("{not json")
    (best, seconds), _ = tune(["a", "b"], {"a": 1.0, "b": 2.0})
    assert best == "a" and seconds > 0
