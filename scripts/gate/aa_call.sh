#!/usr/bin/env bash
# GPU call 2 of the gate's evidence (issue 15): the GPU tests of the timers, isolation and
# kernels (fp32 precision included), scripts/fp32_precision_check.py, and the prefill preset
# run twice, back to back, on one card (A/A). The runs are checked and compared afterwards,
# anywhere (flashbench check, scripts/gate/aa_ratios.py).
# Usage (repository root, on the GPU machine): bash scripts/gate/aa_call.sh
set -uo pipefail
source scripts/device_setup.sh
export FLASHBENCH_CACHE_DIR=/tmp/flashbench-cache
runs=/tmp/gate-aa && rm -rf "$runs" && mkdir -p "$runs"
echo "== GPU tests ($(date -u +%T))" | tee -a "$log"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_timers.py \
  tests/test_gpu_isolation.py tests/test_precision.py tests/test_triton_flash.py \
  tests/test_triton_decode.py tests/test_triton_flash_bwd.py 2>&1 | tee "$runs/gpu-tests.log" | tail -n 12
echo "== fp32 precision ($(date -u +%T))" | tee -a "$log"
python3 scripts/fp32_precision_check.py --quick >"$runs/fp32-precision.txt" 2>&1
echo "exit $?"; cat "$runs/fp32-precision.txt" | tail -n 30
for i in a b; do
  echo "== flashbench run --config prefill ($i, $(date -u +%T))" | tee -a "$log"
  flashbench run --config prefill --out "$runs/prefill-$i" >"$runs/prefill-$i.table.txt" \
    2>"$runs/prefill-$i.stderr"
  echo "exit $? ($(date -u +%T))" | tee -a "$log"
  tail -n 3 "$runs/prefill-$i.stderr"
done
tar -czf "$OUT/gate-aa.tar.gz" -C /tmp gate-aa
