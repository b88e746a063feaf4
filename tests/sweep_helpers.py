"""What the sweep-level tests share: tiny CPU configs, reading a run's rows, waiting on a process."""

import json
import time
from pathlib import Path

from flashbench.core.cases import CASE_FIELDS

PLUGINS = Path(__file__).parent / "plugins"
# Timing that costs almost nothing: these tests check what is measured, not how fast.
FAST_TIMING = "timing: {l2: hot, warmup_ms: 0, budget_ms: 5, min_samples: 1, max_samples: 5}\n"


def write_config(path: Path, backends, seq_len=(16,), causal=(False,)) -> Path:
    """A CPU sweep of the given backends, lengths and masks (B=1, H=2, D=16, fp32)."""
    path.write_text(
        f"name: {path.stem}\ndevice: cpu\nbackends: [{', '.join(backends)}]\nbatch: 1\n"
        f"heads: 2\nseq_len: [{', '.join(map(str, seq_len))}]\nhead_dim: 16\ndtype: fp32\n"
        f"causal: [{', '.join(str(c).lower() for c in causal)}]\n" + FAST_TIMING)
    return path


def rows_of(run_dir: Path) -> list[dict]:
    """Every line must parse: these tests expect no torn line."""
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def key(row: dict) -> tuple:
    return tuple(row[f] for f in CASE_FIELDS)


def wait_for(predicate, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def count_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def fake_row(backend: str, samples, *, rounds=None, seq_len: int = 64, causal: bool = False,
             **fields) -> dict:
    """A valid ``ok`` row of a CPU-sized case with the given raw samples (and rounds), its
    statistics computed as a sweep would: the comparison tests need samples, not a sweep."""
    from flashbench.core.cases import Case, Mode
    from flashbench.core.rows import blank_row
    from flashbench.core.stats import summarize

    case = Case(backend=backend, mode=Mode.FWD, batch=1, heads=2, kv_heads=2, seq_len=seq_len,
                kv_len=seq_len, head_dim=16, dtype="fp32", causal=causal)
    row = blank_row(case, "cuda:0", "cold")
    samples = [float(x) for x in samples]
    row.update(status="ok", samples_ms=samples, **summarize(samples).to_row())
    row.update(sample_rounds=None if rounds is None else [int(r) for r in rounds])
    row.update(fields)
    return row


def write_fake_run(folder: Path, rows, meta=None) -> Path:
    """A run folder holding ``rows`` (and ``meta`` as meta.json when given)."""
    folder.mkdir(parents=True)
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
