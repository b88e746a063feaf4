#!/usr/bin/env bash
# Issue 15's A/A evidence on the final code (clock-aware check, timing.detect): the quick and
# prefill presets each run twice back to back on one card. Checked afterwards, anywhere:
# flashbench check A B --threshold 5%, and scripts/gate/aa_ratios.py A B.
# Each run is bounded (SIGINT: the run stops after its current group, rows kept, marked
# interrupted), so that one device call of ten minutes always brings its files back.
# Usage (repository root, on the GPU machine): bash scripts/gate/final_aa.sh
set -uo pipefail
source scripts/device_setup.sh
export FLASHBENCH_CACHE_DIR=/tmp/flashbench-cache
runs=/tmp/gate-final && rm -rf "$runs" && mkdir -p "$runs"
one() {  # preset, suffix, seconds
  echo "== flashbench run --config $1 ($2, $(date -u +%T))" | tee -a "$log"
  timeout -s INT "$3" flashbench run --config "$1" --out "$runs/$1-$2" \
    >"$runs/$1-$2.table.txt" 2>"$runs/$1-$2.stderr"
  echo "exit $? ($(date -u +%T))" | tee -a "$log"
  tail -n 2 "$runs/$1-$2.stderr"
}
one quick a 60; one quick b 60
one prefill a 230; one prefill b 230
tar -czf "$OUT/gate-final.tar.gz" -C /tmp gate-final
