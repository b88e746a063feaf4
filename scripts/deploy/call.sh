#!/usr/bin/env bash
# Issue 16's evidence on the lent GPU machine, in bounded steps so one ten-minute call always
# brings its files back: the card's ceilings (calibrated once per machine, for GB/s as a share
# of the copy rate), each named sweep (scripts/deploy/NAME.yaml or a preset, with FLAGS_NAME
# extra flags), each bounded by SECONDS_NAME (default 200 s; SIGINT: the run stops after its
# group, rows kept; killed 20 s later if it has not), then optionally GPU tests (pytest -m gpu on the files named by TESTS).
# Usage (repository root): TESTS="tests/test_x.py" bash scripts/deploy/call.sh window ragged-prefill
set -uo pipefail
source scripts/device_setup.sh
export FLASHBENCH_CACHE_DIR=/tmp/flashbench-cache
runs=/tmp/deploy && mkdir -p "$runs"
if ! flashbench calibrate --show >/dev/null 2>&1; then
  echo "== flashbench calibrate ($(date -u +%T))" | tee -a "$log"
  flashbench calibrate --dtypes bf16 --no-progress >"$runs/calibrate.txt" 2>&1
fi
flashbench calibrate --show --json >"$runs/ceilings.json" 2>>"$log"
for name in "$@"; do
  config=scripts/deploy/$name.yaml; [[ -f $config ]] || config=$name
  flags_var=FLAGS_${name//[-.]/_}; seconds_var=SECONDS_${name//[-.]/_}
  echo "== flashbench run --config $config ${!flags_var:-} ($(date -u +%T))" | tee -a "$log"
  rm -rf "$runs/$name"
  # SIGINT first (the run stops after its group and keeps its rows); a run that does not
  # stop within 20 s more (a case that never returns) is killed, so the call always ends.
  timeout -s INT -k 20 "${!seconds_var:-200}" flashbench run --config "$config" ${!flags_var:-} \
    --out "$runs/$name" >"$runs/$name.table.txt" 2>"$runs/$name.stderr"
  echo "exit $? ($(date -u +%T))" | tee -a "$log"; tail -n 3 "$runs/$name.stderr"
done
if [[ -n "${TESTS:-}" ]]; then
  echo "== GPU tests ($(date -u +%T)): $TESTS" | tee -a "$log"
  timeout -s INT -k 10 "${TESTS_SECONDS:-240}" python3 -m pytest -q -m gpu -p no:cacheprovider \
    $TESTS >"$runs/gpu-tests.log" 2>&1
  echo "exit $? ($(date -u +%T))" | tee -a "$log"; tail -n 15 "$runs/gpu-tests.log"
fi
cp "$log" "$runs/device.log"
cp "$FLASHBENCH_CACHE_DIR/tuning.json" "$runs/" 2>/dev/null  # the tuner's winners
tar -czf "$OUT/deploy.tar.gz" -C /tmp deploy
