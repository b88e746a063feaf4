#!/usr/bin/env bash
# GPU evidence in one call on the lent GPU machine: GPU tests, then a sweep, logs under $OUT.
# Usage (from the repository root): bash scripts/device_evidence.sh [flashbench run flags...]
set -uo pipefail
source scripts/device_setup.sh

echo "== GPU tests: pytest -m gpu" | tee -a "$log"
python3 -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log" | tail -5

echo "== flashbench run $*" | tee -a "$log"
python3 -m flashbench run --out /tmp/runs --no-progress "$@" >"$OUT/table.txt" 2>"$OUT/run.stderr"
echo "exit $?" | tee -a "$log"
run_dir=$(ls -d /tmp/runs/*/ | tail -1)
cp "$run_dir/meta.json" "$run_dir/results.jsonl" "$OUT/"
cat "$OUT/table.txt"
tail -20 "$OUT/run.stderr"
