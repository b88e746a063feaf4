#!/usr/bin/env bash
# Issue 17's same-process A/B runs on the lent GPU machine, each bounded (SIGINT, then a kill
# 5 s later: a kernel that hangs the GPU ends only its own step) and logged under $OUT:
#   probe    scripts/kernels_ab/ws_probe.py: the warp-specialized forward candidates run and
#            agree (else FLASHBENCH_TRITON_WS=0 for what follows);
#   prefill  scripts/bench_prefill.py: every forward candidate (warp-specialized ones too),
#            SDPA cuDNN and flash, B=4 H=32 D=128 bf16 at N=$PREFILL_N;
#   decode   scripts/bench_decode_ab.py: two launches, fused, fused+tuned, cuDNN;
#   bwd      scripts/bench_bwd_gqa.py (when present): GQA backward at batch 1, group splits;
#   tests    pytest -m gpu on $TESTS.
# Usage (repository root): STEPS="prefill decode tests" TESTS="tests/x.py" bash scripts/kernels_ab/call.sh
set -uo pipefail
source scripts/device_setup.sh
export FLASHBENCH_CACHE_DIR=/tmp/flashbench-cache
step() {  # step NAME SECONDS COMMAND...
  local name=$1 seconds=$2; shift 2
  echo "== $name: $* ($(date -u +%T))" | tee -a "$log"
  timeout -s INT -k 5 "$seconds" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "exit $rc ($(date -u +%T))" | tee -a "$log"
  tail -n 25 "$OUT/$name.log"
}
for s in ${STEPS:-probe prefill decode bwd tests}; do
  case $s in
    probe) step probe "${PROBE_SECONDS:-60}" python3 scripts/kernels_ab/ws_probe.py
           # A warp-specialized candidate that disagrees, fails or hangs: the later steps (and
           # a later deploy/call.sh that finds $OUT/ws_off) run without them.
           if [[ $rc != 0 ]]; then export FLASHBENCH_TRITON_WS=0; touch "$OUT/ws_off"; fi ;;
    prefill) step prefill "${PREFILL_SECONDS:-100}" python3 scripts/bench_prefill.py \
               --seq-len "${PREFILL_N:-4096,16384}" --head-dim 128 --variants '' \
               --out "$OUT/prefill.json" ;;
    decode) step decode "${DECODE_SECONDS:-60}" python3 scripts/bench_decode_ab.py \
              --max-seconds $(( ${DECODE_SECONDS:-60} - 15 )) --out "$OUT/decode_ab.md" ;;
    bwd) [[ -f scripts/bench_bwd_gqa.py ]] && step bwd "${BWD_SECONDS:-90}" \
           python3 scripts/bench_bwd_gqa.py --max-seconds $(( ${BWD_SECONDS:-90} - 15 )) \
           --out "$OUT/bwd_gqa.md" ;;
    tests) step tests "${TESTS_SECONDS:-100}" python3 -m pytest -q -m gpu -p no:cacheprovider \
             ${TESTS:-tests} ;;
  esac
done
