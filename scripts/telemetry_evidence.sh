#!/usr/bin/env bash
# Issue 7's evidence in one call on the lent GPU: the new GPU tests, calibrate and its check
# against the usual measurement, profiles of one case with Nsight Compute, and a default sweep
# with telemetry and roofline columns. Everything lands under $OUT.
# Usage (from the repository root): bash scripts/telemetry_evidence.sh
set -uo pipefail
source scripts/device_setup.sh
# The device hands back a few files only: everything goes into one archive at the end.
FINAL_OUT=$OUT
OUT=$FINAL_OUT/evidence
mkdir -p "$OUT" && mv "$log" "$OUT/" && log="$OUT/device.log"
export FLASHBENCH_CACHE_DIR=/tmp/fb-cache

step() { echo "== $*" | tee -a "$log"; }
step "GPU tests of calibrate, roofline, profile"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_calibrate_roofline.py \
  tests/test_profile.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -5

step "flashbench env / calibrate"
python3 -m flashbench calibrate --no-progress >"$OUT/calibrate.txt" 2>>"$log"; echo "exit $?"
python3 -m flashbench calibrate --show --json >"$OUT/calibrate.json"
python3 -m flashbench env >"$OUT/env.txt" 2>>"$log"
cat "$OUT/calibrate.txt"

step "calibration against the usual way"
python3 scripts/calibration_reference.py >"$OUT/calibration-reference.txt" 2>>"$log"
echo "exit $?"; head -4 "$OUT/calibration-reference.txt"

for causal in --no-causal --causal; do
  step "flashbench profile $causal"
  python3 -m flashbench profile $causal --out /tmp/profiles >"$OUT/profile$causal.txt" \
    2>"$OUT/profile$causal.stderr"
  echo "exit $?"; cat "$OUT/profile$causal.txt"
  dir=$(ls -d /tmp/profiles/profile-*/ | tail -1)
  mkdir -p "$OUT/profile$causal" && cp "$dir"/* "$OUT/profile$causal/"
done

step "flashbench run --config default"
python3 -m flashbench run --out /tmp/runs --no-progress >"$OUT/table.txt" 2>"$OUT/run.stderr"
echo "exit $?"; tail -8 "$OUT/run.stderr"
run_dir=$(ls -d /tmp/runs/*/ | tail -1)
cp "$run_dir/meta.json" "$run_dir/results.jsonl" "$OUT/"
python3 -m flashbench report "$run_dir" --format markdown -o "$OUT/report.md" --plot "$OUT/plots"
tail -3 "$OUT/report.md"
tar -czf "$FINAL_OUT/evidence.tgz" -C "$FINAL_OUT" evidence && rm -rf "$OUT"
