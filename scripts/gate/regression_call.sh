#!/usr/bin/env bash
# GPU call 3 of the gate's evidence (issue 15): the quick preset twice (A/A); a baseline of
# scripts/gate/regression.yaml, then five runs of the plugin with 10% more work
# (FLASHBENCH_REGRESSION=1) and five unchanged; then the timers side by side.
# Checked afterwards, anywhere: flashbench check BASELINE RUN --threshold 5%.
# Usage (repository root, on the GPU machine): bash scripts/gate/regression_call.sh
set -uo pipefail
source scripts/device_setup.sh
export FLASHBENCH_CACHE_DIR=/tmp/flashbench-cache
runs=/tmp/gate-reg && rm -rf "$runs" && mkdir -p "$runs"
echo "== GPU tests ($(date -u +%T))" | tee -a "$log"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_timers.py \
  tests/test_gpu_isolation.py tests/test_precision.py tests/test_triton_flash.py \
  tests/test_triton_decode.py tests/test_triton_flash_bwd.py 2>&1 | tee "$runs/gpu-tests.log" | tail -n 12
plugin=scripts/gate/regression_plugin.py
for i in a b; do
  echo "== flashbench run --config quick ($i, $(date -u +%T))" | tee -a "$log"
  flashbench run --config quick --out "$runs/quick-$i" >"$runs/quick-$i.table.txt" \
    2>"$runs/quick-$i.stderr"
  echo "exit $?"
done
run_one() {  # name, then env assignments
  local name=$1; shift
  echo "== $name ($(date -u +%T))" | tee -a "$log"
  env "$@" flashbench run --config scripts/gate/regression.yaml --plugin "$plugin" \
    --out "$runs/$name" >"$runs/$name.table.txt" 2>"$runs/$name.stderr"
  echo "exit $?"
}
run_one baseline FLASHBENCH_REGRESSION=0
for i in 1 2 3 4 5; do
  run_one slower-$i FLASHBENCH_REGRESSION=1
  run_one same-$i FLASHBENCH_REGRESSION=0
done
if [[ -n "${TIMERS:-}" ]]; then
echo "== timers table ($(date -u +%T))" | tee -a "$log"
python3 scripts/timers_table.py "$runs/timers.json" >"$runs/timers.md" 2>"$runs/timers.stderr"
echo "exit $? ($(date -u +%T))"
cat "$runs/timers.md"
fi
tar -czf "$OUT/gate-reg.tar.gz" -C /tmp gate-reg
