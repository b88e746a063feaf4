"""Two runs of one preset on one card: each triton/sdpa-cudnn speedup in both, and how far apart.

    python3 scripts/gate/aa_ratios.py RUN_A RUN_B [--min-seq-len 2048] [--within 0.02]

Prints a Markdown table and one summary line; exit 0 always (the figures are the evidence).
"""

import argparse
from pathlib import Path

from flashbench.results.compare import compare_backends
from flashbench.results.reading import load_run

parser = argparse.ArgumentParser()
parser.add_argument("runs", nargs=2)
parser.add_argument("--backend", default="triton")
parser.add_argument("--baseline", default="sdpa-cudnn")
parser.add_argument("--min-seq-len", type=int, default=2048)
parser.add_argument("--within", type=float, default=0.02)
args = parser.parse_args()

frames = []
for run in args.runs:
    rows, _, _ = load_run(run, Path(run).parent)
    frames.append(compare_backends(rows, baseline=args.baseline).set_index(
        ["mode", "batch", "heads", "kv_heads", "seq_len", "kv_len", "head_dim", "dtype",
         "causal"]))
a, b = frames
col = f"{args.backend}:speedup"
lo, hi = f"{args.backend}:speedup_low", f"{args.backend}:speedup_high"
print(f"| N | D | dtype | causal | {args.backend}/{args.baseline} run A | run B | B/A |")
print("| ---: | ---: | --- | --- | ---: | ---: | ---: |")
counted = agree = 0
for key in a.index:
    if key not in b.index:
        continue
    ra, rb = a.loc[key, col], b.loc[key, col]
    if not (ra == ra and rb == rb):  # NaN: not timed ok in one of them
        continue
    n, d, dtype, causal = key[4], key[6], key[7], key[8]
    interval = ""
    if lo in a.columns and a.loc[key, lo] == a.loc[key, lo]:
        interval = f" [{a.loc[key, lo]:.3f}, {a.loc[key, hi]:.3f}]"
    print(f"| {n} | {d} | {dtype} | {causal} | {ra:.3f}{interval} | {rb:.3f} "
          f"| {rb / ra:.3f} |")
    if n >= args.min_seq_len:
        counted += 1
        agree += abs(rb / ra - 1) <= args.within
print(f"\n{agree} of {counted} ratios at N >= {args.min_seq_len} agree within "
      f"{args.within:.0%} between the two runs")
