#!/usr/bin/env bash
# GPU evidence in one call on the lent GPU machine: GPU tests, then a sweep, logs under $OUT.
# Usage (from the repository root): bash scripts/device_evidence.sh [flashbench run flags...]
# Wheels missing on that machine (pydantic and its dependencies) travel in .whl/.
set -uo pipefail
OUT=${OUT:-/tmp/flashbench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log="$OUT/device.log"
{
  nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
    --format=csv
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  fi
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
} >"$log" 2>&1
export PYTHONPATH=/tmp/site
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$log"

echo "== GPU tests: pytest -m gpu" | tee -a "$log"
python3 -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log" | tail -5

echo "== flashbench run $*" | tee -a "$log"
python3 -m flashbench run --out /tmp/runs --no-progress "$@" >"$OUT/table.txt" 2>"$OUT/run.stderr"
echo "exit $?" | tee -a "$log"
run_dir=$(ls -d /tmp/runs/*/ | tail -1)
cp "$run_dir/meta.json" "$run_dir/results.jsonl" "$OUT/"
cat "$OUT/table.txt"
tail -20 "$OUT/run.stderr"
