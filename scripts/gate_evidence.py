"""The simulated figures of docs/check.md on what the gate can see: `undetectable`, paired intervals, speed.

1. The smallest detectable slowdown (flashbench.results.intervals.detectable_slowdown) over
   A/A pairs of simulated runs, N samples a side: how often a case is `undetectable` at 5%,
   and whether the estimate means what it says (a slowdown of that size is caught about half
   the time; twice that size, nearly always).
   And how often A/A pairs of 1 to 4 samples a side are flagged (why fewer than 3 samples are
   undetectable whatever their interval says).
2. compare's speedup interval under a drift shared by both backends round by round (what an
   interleaved sweep sees): paired by round against unpaired, width and coverage.
3. How long compare_backends takes for 300 cells of 1000 samples each.

    python scripts/gate_evidence.py [--trials 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from flashbench.results.compare import compare_backends, compare_runs, timing_verdict

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results/reference/h100-default/results.jsonl"
THRESHOLD = 0.05


def _row(backend, samples, rounds=None, seq_len=64):
    row = {"backend": backend, "mode": "fwd", "batch": 1, "heads": 2, "kv_heads": 2,
           "seq_len": seq_len, "kv_len": seq_len, "head_dim": 16, "dtype": "fp32",
           "causal": False, "status": "ok", "timer": "cuda-events", "l2": "cold",
           "samples_ms": [float(x) for x in samples],
           "sample_rounds": None if rounds is None else [int(r) for r in rounds]}
    row["median_ms"] = float(np.median(samples))
    return row


def _detectable(a, b):
    frame = compare_runs([_row("x", a)], [_row("x", b)], threshold=THRESHOLD)
    return float(frame["detectable"].iloc[0]), frame["verdict"].iloc[0]


def _caught(draw, seed, n, s, trials):
    """Share of ``trials`` pairs slowed by ``s`` that the gate flags; the same draws for
    every ``s`` (one seed), so the share grows with ``s`` and can be bisected."""
    rng = np.random.default_rng(seed)
    pairs = [(draw(rng, n), draw(rng, n)) for _ in range(trials)]
    return np.mean([timing_verdict(a.tolist(), (b * (1 + s)).tolist(),
                                   threshold=THRESHOLD)[0] == "regression" for a, b in pairs])


def _slowdown_caught(draw, n, share, trials, steps=8):
    """The slowdown the gate catches in ``share`` of the pairs, by bisection on [0, 64%]."""
    low, high = 0.0, 0.64
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (low, mid) if _caught(draw, 1, n, mid, trials) >= share else (mid, high)
    return (low + high) / 2


def detectable_table(trials: int) -> None:
    rows = [json.loads(line) for line in REFERENCE.read_text().splitlines()]
    pools = [np.asarray(r["samples_ms"]) / r["median_ms"] for r in rows
             if r["status"] == "ok" and len(r["samples_ms"]) >= 20]
    models = {"lognormal 1%": lambda rng, n: rng.lognormal(0, 0.01, n),
              "lognormal 3%": lambda rng, n: rng.lognormal(0, 0.03, n),
              "H100 samples": lambda rng, n: rng.choice(pools[rng.integers(len(pools))], n)}
    print(f"## detectable slowdown, A/A pairs, {trials} per cell, threshold {THRESHOLD:.0%}")
    print("| noise | samples a side | undetectable | detectable: median [p10, p90] | "
          "5% caught | caught in 50% | caught in 90% |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for name, draw in models.items():
        for n in (3, 4, 6, 10, 30):
            rng = np.random.default_rng(0)
            found = [_detectable(draw(rng, n), draw(rng, n)) for _ in range(trials)]
            d = np.array([x for x, _ in found])
            blind = np.mean([v == "undetectable" for _, v in found])
            p10, p50, p90 = np.percentile(d, [10, 50, 90])
            at = _caught(draw, 1, n, THRESHOLD, trials)
            s50, s90 = (_slowdown_caught(draw, n, q, trials) for q in (0.5, 0.9))
            print(f"| {name} | {n} | {blind:.0%} | {p50:.1%} [{p10:.1%}, {p90:.1%}] | "
                  f"{at:.0%} | {s50:.1%} | {s90:.1%} |", flush=True)


def false_alarms(trials: int) -> None:
    print(f"\n## A/A pairs flagged as a regression at {THRESHOLD:.0%}, lognormal noise, "
          f"{2 * trials} pairs per cell")
    print("| samples a side | 1% noise | 3% noise |")
    print("| ---: | ---: | ---: |")
    for n in (1, 2, 3, 4):
        cells = []
        for sigma in (0.01, 0.03):
            rng = np.random.default_rng(0)
            flagged = [timing_verdict(rng.lognormal(0, sigma, n).tolist(),
                                      rng.lognormal(0, sigma, n).tolist(),
                                      threshold=THRESHOLD)[0] == "regression"
                       for _ in range(2 * trials)]
            cells.append(f"{np.mean(flagged):.1%}")
        print(f"| {n} | " + " | ".join(cells) + " |")


def paired_table(trials: int, rounds: int = 100) -> None:
    truth = 1.25
    print(f"\n## speedup interval (95%), {rounds} rounds, true speedup {truth}, "
          f"{trials} trials per row")
    print("| per-round drift (shared) | own noise | paired: median width | paired: covers "
          "truth | unpaired: median width | unpaired: covers truth |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for drift_sigma, noise in ((0.0, 0.01), (0.03, 0.005), (0.05, 0.01), (0.10, 0.01)):
        rng = np.random.default_rng(0)
        stats = {True: ([], []), False: ([], [])}
        for _ in range(trials):
            drift = rng.lognormal(0, drift_sigma, rounds)
            base = drift * rng.lognormal(0, noise, rounds)
            fast = drift * rng.lognormal(0, noise, rounds) / truth
            for paired in (True, False):
                r = None if not paired else range(rounds)
                f = compare_backends([_row("sdpa", base, r), _row("triton", fast, r)], "sdpa")
                low, high = f["triton:speedup_low"].iloc[0], f["triton:speedup_high"].iloc[0]
                stats[paired][0].append((high - low) / f["triton:speedup"].iloc[0])
                stats[paired][1].append(low <= truth <= high)
        cells = [f"{np.median(stats[p][0]):.2%} | {np.mean(stats[p][1]):.0%}" for p in (True, False)]
        print(f"| {drift_sigma:.0%} | {noise:.1%} | " + " | ".join(cells) + " |")


def speed() -> None:
    rng = np.random.default_rng(0)
    print("\n## compare_backends, 300 cells (100 shapes x 3 backends) of 1000 samples")
    for paired in (False, True):
        rows = [_row(b, rng.lognormal(0, 0.02, 1000) * scale,
                     range(1000) if paired else None, seq_len=16 * (shape + 1))
                for shape in range(100) for b, scale in (("sdpa", 1), ("triton", .9),
                                                         ("naive", 3))]
        best = min(_timed(rows) for _ in range(3))
        print(f"{'paired' if paired else 'unpaired'}: {best:.3f} s (best of 3)")


def _timed(rows) -> float:
    start = time.perf_counter()
    compare_backends(rows)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    detectable_table(args.trials)
    false_alarms(args.trials)
    paired_table(args.trials)
    speed()


if __name__ == "__main__":
    main()
