"""Shards end to end through the CLI: together they are the unsharded run; merge, its refusals, and the merged run's readers."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashbench.results.check import run_check
from flashbench.cli import app
from sweep_helpers import FAST_TIMING, key, rows_of

# 2 lengths x full/causal = 4 shapes, two backends each: 8 cases.
CONFIG = ("name: shards\ndevice: cpu\nbackends: [naive, sdpa-math]\nbatch: 1\nheads: 2\n"
          "seq_len: [16, 32]\nhead_dim: 16\ndtype: fp32\ncausal: [false, true]\n"
          + FAST_TIMING)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def run(config: Path, out: Path, *args) -> Path:
    """One run, in this process (--no-isolate) to keep the tests quick; its folder."""
    result = invoke("run", "--config", config, *args, "--out", out, "--no-progress",
                    "--no-isolate")
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    return run_dir


def meta_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


def keys(run_dir: Path) -> list[tuple]:
    return [key(r) for r in rows_of(run_dir)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shards")
    config = root / "shards.yaml"
    config.write_text(CONFIG)
    return {
        "root": root, "config": config,
        "whole": run(config, root / "whole"),
        3: [run(config, root / f"of3-{i}", "--shard", f"{i}/3") for i in (1, 2, 3)],
        6: [run(config, root / f"of6-{i}", "--shard", f"{i}/6") for i in range(1, 7)],
    }


@pytest.mark.parametrize("count", [3, 6])
def test_the_shards_together_are_the_unsharded_run(sweep, count):
    whole = keys(sweep["whole"])
    assert len(whole) == 8
    parts = [keys(d) for d in sweep[count]]
    flat = [k for p in parts for k in p]
    assert sorted(flat) == sorted(whole) and len(set(flat)) == 8  # every case, none twice
    for i, (run_dir, part) in enumerate(zip(sweep[count], parts), start=1):
        meta = meta_of(run_dir)
        assert meta["shard"] == {"index": i, "count": count, "grid_cases": 8}
        assert meta["status"] == "completed" and meta["n_cases"] == len(part)
        shapes = {k[1:] for k in part}
        assert len(part) == 2 * len(shapes)  # whole groups: both backends of each shape
    # More shards than shapes: one shape each, and two valid empty runs.
    sizes = sorted(len(p) for p in parts)
    assert sizes == ([2, 2, 4] if count == 3 else [0, 0, 2, 2, 2, 2])
    for run_dir in sweep[count]:
        assert (run_dir / "results.jsonl").exists()


def test_merge_then_compare_report_and_check_read_the_merged_run(sweep, tmp_path):
    shards = sweep[3]
    merged = tmp_path / "merged"
    result = invoke("merge", shards[2], shards[0], shards[1], "-o", merged)
    assert result.exit_code == 0, result.output
    assert f"merged 3 of 3 shard(s), 8 rows, into {merged}" in result.stderr
    # Shard by shard, each shard's rows as they were.
    assert keys(merged) == keys(shards[0]) + keys(shards[1]) + keys(shards[2])
    assert rows_of(merged) == [r for s in shards for r in rows_of(s)]
    meta = meta_of(merged)
    assert meta["status"] == "completed" and meta["n_cases"] == 8 and "shard" not in meta
    assert meta["config"] == meta_of(sweep["whole"])["config"]
    assert [f["shard"] for f in meta["merged"]["from"]] == ["1/3", "2/3", "3/3"]
    assert [f["run"] for f in meta["merged"]["from"]] == [str(s) for s in shards]
    assert meta["merged"]["missing"] == [] and meta["environment"]["device"] == "cpu"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    compare = invoke("compare", merged)
    assert compare.exit_code == 0, compare.output
    assert "naive" in compare.stdout and "sdpa-math" in compare.stdout
    csv = invoke("report", merged, "--format", "csv")
    assert csv.exit_code == 0 and len(csv.stdout.strip().splitlines()) == 1 + 8
    assert "device_index" in csv.stdout.splitlines()[0]
    check = invoke("check", merged, merged)
    assert check.exit_code == 0 and "check: no regression (" in check.stdout
    # A run against itself: every case timed, none changed (up to 5 CPU samples a side, so
    # some are `undetectable`: such samples cannot show a 5% slowdown).
    itself = run_check(str(merged), str(merged), root=tmp_path).frame["verdict"]
    assert len(itself) == 8 and set(itself) <= {"unchanged", "undetectable"}
    # Against the unsharded run: the same cases, none missing, none new.
    verdicts = run_check(str(sweep["whole"]), str(merged), root=tmp_path).frame["verdict"]
    assert len(verdicts) == 8 and not set(verdicts) & {"missing", "new"}
    against = invoke("check", sweep["whole"], merged)
    assert against.exit_code in (0, 1), against.output  # CPU timings may differ; never bad input


def test_empty_shards_merge_too(sweep, tmp_path):
    result = invoke("merge", *sweep[6], "-o", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    assert sorted(keys(tmp_path / "merged")) == sorted(keys(sweep["whole"]))


def test_a_partial_merge_says_what_is_missing_and_resume_measures_it(sweep, tmp_path):
    merged = tmp_path / "partial"
    result = invoke("merge", sweep[3][0], sweep[3][2], "-o", merged, "--allow-partial")
    assert result.exit_code == 0, result.output
    assert "; missing: 2/3" in result.stderr
    meta = meta_of(merged)
    assert meta["status"] == "partial" and meta["merged"]["missing"] == [2]
    assert meta["n_cases"] == len(keys(sweep[3][0])) + len(keys(sweep[3][2])) < 8
    # The merged run has the sweep's config and no shard: a resume measures the missing cases.
    done = invoke("run", "--resume", merged, "--no-progress", "--no-isolate")
    assert done.exit_code == 0, done.output
    assert sorted(keys(merged)) == sorted(keys(sweep["whole"]))
    assert meta_of(merged)["status"] == "completed"


def copy(run_dir: Path, to: Path, **meta_changes) -> Path:
    shutil.copytree(run_dir, to)
    meta = meta_of(to) | meta_changes
    (to / "meta.json").write_text(json.dumps(meta))
    return to


def _interrupted(sweep, tmp):
    run_dir = copy(sweep[3][1], tmp / "cut", status="interrupted")
    lines = (run_dir / "results.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "results.jsonl").write_text(lines[0])
    return [sweep[3][0], run_dir, sweep[3][2]]


def _other_config(sweep, tmp):
    changed = meta_of(sweep[3][1])["config"] | {"seq_len": [16, 24, 48]}
    return [sweep[3][0], copy(sweep[3][1], tmp / "other", config=changed), sweep[3][2]]


def _other_torch(sweep, tmp):
    env = meta_of(sweep[3][2])["environment"] | {"torch": "1.0.0"}
    return [sweep[3][0], sweep[3][1], copy(sweep[3][2], tmp / "old-torch", environment=env)]


def _duplicate_case(sweep, tmp):
    forged = copy(sweep[3][2], tmp / "forged")
    extra = (sweep[3][0] / "results.jsonl").read_text().splitlines(keepends=True)[0]
    with open(forged / "results.jsonl", "a") as f:
        f.write(extra)
    (forged / "meta.json").write_text(json.dumps(meta_of(forged) | {
        "n_cases": len(rows_of(forged))}))
    return [sweep[3][0], sweep[3][1], forged]


def _grid_of_13(sweep, tmp):
    return [copy(d, tmp / f"g{i}", shard=meta_of(d)["shard"] | {"grid_cases": 13})
            for i, d in enumerate(sweep[3])]


@pytest.mark.parametrize("inputs, extra, message", [
    (lambda s, t: [t / "nothing-here"], (), "no such run or results file"),
    (lambda s, t: [s["whole"]], (), "was not made with --shard; merge combines the shards"),
    (_interrupted, (), "is not finished (interrupted, 1 of 2 cases): flashbench run --resume"),
    (_other_config, (), "has another config than"),
    (lambda s, t: [s[3][0], s[6][1]], (), "shards of different splits"),
    (lambda s, t: [*s[3], copy(s[3][0], t / "again")], (), "shard 1/3 is given twice"),
    (lambda s, t: [*s[3], s[3][0]], (), "is given twice"),
    (_other_torch, (), "was measured in another environment than"),
    (lambda s, t: [s[3][0], s[3][2]], (), "shard(s) 2/3 missing (given: 1/3, 3/3); pass "
                                          "--allow-partial to merge those given"),
    (_duplicate_case, (), "is in both"),
    (_grid_of_13, (), "the shards hold 8 cases but the sweep has 13"),
    (lambda s, t: s[3], ("-o", "taken"), "already exists; the merged run needs a new folder"),
])
def test_merge_refuses_what_is_not_one_sweep_and_writes_nothing(sweep, tmp_path, inputs, extra,
                                                                message):
    runs = inputs(sweep, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "taken").mkdir()
    before = sorted(p.name for p in out.iterdir())
    result = invoke("merge", *runs, *(["-o", out / extra[1]] if extra else ["-o", out / "m"]))
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == before  # nothing, not even a temporary


def test_environments_may_differ_when_told(sweep, tmp_path):
    runs = _other_torch(sweep, tmp_path)
    result = invoke("merge", *runs, "-o", tmp_path / "m", "--allow-env-mismatch")
    assert result.exit_code == 0, result.output
    assert "note: environments differ:" in result.stderr and "torch '" in result.stderr
    assert meta_of(tmp_path / "m")["merged"]["environment_differences"]


def test_resume_of_a_shard_runs_only_the_shards_cases(sweep, tmp_path):
    shard = sweep[3][0]
    cut = copy(shard, tmp_path / "cut", status="interrupted")
    lines = (cut / "results.jsonl").read_text().splitlines(keepends=True)
    (cut / "results.jsonl").write_text(lines[0])
    done = invoke("run", "--resume", cut, "--no-progress", "--no-isolate")
    assert done.exit_code == 0, done.output
    assert sorted(keys(cut)) == sorted(keys(shard))
    meta = meta_of(cut)
    assert meta["status"] == "completed" and meta["shard"]["index"] == 1
    assert meta["n_cases"] == len(lines)


@pytest.mark.parametrize("args, message", [
    (["--shard", "0/3"], "--shard 0/3: the shard must be between 1 and 3 (shards count from 1)"),
    (["--shard", "2of3"], "--shard: '2of3' is not I/N"),
    (["--shard", "4/3"], "the shard must be between 1 and 3"),
])
def test_bad_shards_exit_2_and_leave_nothing(sweep, tmp_path, args, message):
    out = tmp_path / "runs"
    result = invoke("run", "--config", sweep["config"], *args, "--out", out, "--no-progress")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()


def test_a_resume_keeps_the_runs_own_shard(sweep):
    result = invoke("run", "--resume", sweep[3][0], "--shard", "2/3", "--no-progress")
    assert result.exit_code == 2
    assert "--resume runs the rest of the run's own config; drop --shard" in result.stderr


def test_merge_needs_an_output_folder(sweep):
    result = invoke("merge", *sweep[3])
    assert result.exit_code == 2 and "Missing option '--output'" in result.stderr
