"""How often `flashbench check` cries wolf, and how small a slowdown it catches.

Simulates pairs of runs with N samples per side (default 30) under three noise models and
applies the gate's own rule (flashbench.results.compare.timing_verdict, threshold 5%, 99% bootstrap
interval): A/A pairs give the false-alarm rate, B = A x (1 + s) gives the detection rate.

    python scripts/check_power.py [--samples 30] [--trials 400]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from flashbench.results.compare import timing_verdict

REFERENCE = Path(__file__).resolve().parents[1] / "results/reference/h100-default/results.jsonl"
SLOWDOWNS = (0.0, 0.03, 0.05, 0.06, 0.07, 0.08, 0.10, 0.15, 0.20)


def lognormal(rng, n, sigma):
    return rng.lognormal(0.0, sigma, n)


def with_outliers(rng, n):
    # 2% jitter, and one sample in twenty 30% slow (a preempted or throttled sample)
    x = rng.lognormal(0.0, 0.02, n)
    return np.where(rng.random(n) < 0.05, x * 1.3, x)


def h100_empirical(pools):
    # Resample the raw samples of a random case of the committed H100 run, scaled to median 1.
    def draw(rng, n):
        pool = pools[rng.integers(len(pools))]
        return rng.choice(pool, n)
    return draw


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--trials", type=int, default=400)
    args = parser.parse_args()
    rows = [json.loads(line) for line in REFERENCE.read_text().splitlines()]
    pools = [np.asarray(r["samples_ms"]) / r["median_ms"] for r in rows
             if r["status"] == "ok" and len(r["samples_ms"]) >= 20]
    models = {
        "lognormal 1%": lambda rng, n: lognormal(rng, n, 0.01),
        "lognormal 3%": lambda rng, n: lognormal(rng, n, 0.03),
        "2% + 5% outliers": with_outliers,
        "H100 samples": h100_empirical(pools),
    }
    n, trials = args.samples, args.trials
    print(f"{n} samples per side, {trials} trials per cell, threshold 5%, 99% interval")
    print("| noise | " + " | ".join(f"{s:.0%}" for s in SLOWDOWNS) + " |")
    print("| --- | " + " | ".join("---:" for _ in SLOWDOWNS) + " |")
    for name, draw in models.items():
        rng = np.random.default_rng(0)
        cells = []
        for s in SLOWDOWNS:
            hits = 0
            for t in range(trials):
                a, b = draw(rng, n), draw(rng, n) * (1 + s)
                verdict, _ = timing_verdict(a.tolist(), b.tolist(), threshold=0.05)
                hits += verdict == "regression"
            cells.append(f"{hits / trials:.1%}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
