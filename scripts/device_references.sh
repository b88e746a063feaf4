#!/usr/bin/env bash
# Reference runs on the lent GPU machine in one call: the card's ceilings (calibrated once per
# machine), optionally the GPU tests, then one sweep per preset, each packed into
# $OUT/<preset>.tar.gz (meta.json, results.jsonl, table.txt, run.stderr) as soon as it ends,
# and optionally `flashbench profile` of its default shape, full and causal, packed into
# $OUT/profiles.tar.gz.
# Usage (from the repository root): bash scripts/device_references.sh [--tests] [--profiles] PRESET...
set -uo pipefail
source scripts/device_setup.sh
export FLASHBENCH_CACHE_DIR=${FLASHBENCH_CACHE_DIR:-/tmp/flashbench-cache}  # tuning, ceilings
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --tests) tests=1 ;;
    --profiles) profiles=1 ;;
  esac
  shift
done
if ! flashbench calibrate --show >/dev/null 2>&1; then
  echo "== flashbench calibrate" | tee -a "$log"
  flashbench calibrate --no-progress >"$OUT/calibrate.txt" 2>&1
fi
flashbench calibrate --show --json >"$OUT/ceilings.json" 2>>"$log"
if [[ -n "${tests:-}" ]]; then
  echo "== GPU tests: pytest -m gpu" | tee -a "$log"
  python3 -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log" | tail -n 3
fi
for preset in "$@"; do
  echo "== flashbench run --config $preset ($(date -u +%T))" | tee -a "$log"
  dir=/tmp/references/$preset
  rm -rf "$dir" && mkdir -p "$dir"
  flashbench run --config "$preset" --out "$dir/runs" >"$dir/table.txt" 2>"$dir/run.stderr"
  echo "exit $? ($(date -u +%T))" | tee -a "$log"
  run=$(ls -d "$dir"/runs/*/ | tail -n 1)
  cp "$run/meta.json" "$run/results.jsonl" "$dir/"
  tail -n 4 "$dir/run.stderr"
  tar -czf "$OUT/$preset.tar.gz" -C "$dir" meta.json results.jsonl table.txt run.stderr
done
if [[ -n "${profiles:-}" ]]; then
  for mask in --no-causal --causal; do
    echo "== flashbench profile $mask ($(date -u +%T))" | tee -a "$log"
    flashbench profile "$mask" --out /tmp/profiles >"/tmp/profiles-$mask.txt" 2>&1
    echo "exit $?" | tee -a "$log"
    cat "/tmp/profiles-$mask.txt"
  done
  cp /tmp/profiles-*.txt /tmp/profiles/
  tar -czf "$OUT/profiles.tar.gz" -C /tmp profiles
fi
