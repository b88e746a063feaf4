#!/usr/bin/env bash
# GPU call 1 of the gate's evidence (issue 15): the GPU tests, the quick preset under each timer
# and without interleaving, and the timers side by side (scripts/timers_table.py).
# Usage (repository root, on the GPU machine): bash scripts/gate/timers_call.sh
set -uo pipefail
source scripts/device_setup.sh
export FLASHBENCH_CACHE_DIR=/tmp/flashbench-cache
runs=/tmp/gate-runs && rm -rf "$runs" && mkdir -p "$runs"
echo "== GPU tests ($(date -u +%T))" | tee -a "$log"
python3 -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$runs/gpu-tests.log" | tail -n 15
flashbench list --device cuda >"$runs/list.txt" 2>&1
for variant in "events" "graph" "profiler" "events --no-interleave"; do
  name=quick-${variant// /}
  echo "== flashbench run --config quick --timer $variant ($(date -u +%T))" | tee -a "$log"
  flashbench run --config quick --timer $variant --out "$runs/$name" \
    >"$runs/$name.table.txt" 2>"$runs/$name.stderr"
  echo "exit $?" | tee -a "$log"
  tail -n 3 "$runs/$name.stderr"
done
echo "== timers table ($(date -u +%T))" | tee -a "$log"
python3 scripts/timers_table.py "$runs/timers.json" >"$runs/timers.md" 2>"$runs/timers.stderr"
echo "exit $? ($(date -u +%T))" | tee -a "$log"
cat "$runs/timers.md"
tail -n 5 "$runs/timers.stderr"
tar -czf "$OUT/gate-timers.tar.gz" -C /tmp gate-runs
