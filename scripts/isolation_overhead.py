"""What worker isolation costs: wall time of one sweep with and without it, runs alternated.

    python scripts/isolation_overhead.py --repeats 5 -- --config cpu
    python scripts/isolation_overhead.py --repeats 3 -- --config quick      # on a GPU

Everything after ``--`` goes to ``flashbench run``. Prints a Markdown table (the figures in
docs/reliability.md come from it) and the overhead as a share of the in-process sweep's time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def _one_run(flags: list[str], isolate: bool, out: str) -> float:
    command = [sys.executable, "-m", "flashbench", "run", *flags, "--no-progress", "--out", out,
               "--isolate" if isolate else "--no-isolate"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("flags", nargs="*", help="flashbench run flags, after --")
    args = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as out:
        for i in range(args.repeats):
            # Alternate, so that a drift of the machine falls on both sides alike.
            for isolate in ((True, False) if i % 2 == 0 else (False, True)):
                times[isolate].append(_one_run(args.flags, isolate, out))
                print(f"run {i + 1} {'isolated' if isolate else 'in-process'}: "
                      f"{times[isolate][-1]:.2f} s", file=sys.stderr)
    print(f"`flashbench run {' '.join(args.flags)}`, {args.repeats} runs each, alternated\n")
    print("| mode | wall time, mean ± sd (s) | min (s) | runs (s) |")
    print("| --- | --- | --- | --- |")
    for isolate, name in ((True, "isolated (default)"), (False, "`--no-isolate`")):
        t = times[isolate]
        sd = statistics.stdev(t) if len(t) > 1 else 0.0
        print(f"| {name} | {statistics.fmean(t):.2f} ± {sd:.2f} | {min(t):.2f} | "
              f"{', '.join(f'{x:.2f}' for x in t)} |")
    mean_in, mean_iso = statistics.fmean(times[False]), statistics.fmean(times[True])
    min_in, min_iso = min(times[False]), min(times[True])
    print(f"\noverhead: {mean_iso - mean_in:+.2f} s on the means "
          f"({(mean_iso - mean_in) / mean_in:+.1%}), {min_iso - min_in:+.2f} s on the minima "
          f"({(min_iso - min_in) / min_in:+.1%})")


if __name__ == "__main__":
    main()
