#!/usr/bin/env bash
# Issue 17's same-process A/B runs on the lent GPU machine, each bounded (SIGINT, then a kill
# 5 s later: a kernel that hangs the GPU ends only its own step) and logged under $OUT:
#   probe    scripts/kernels_ab/ws_probe.py with FLASHBENCH_TRITON_WS=1: do the
#            warp-specialized forward candidates (off by default) run and agree?
#   prefill  scripts/bench_prefill.py: every forward candidate (warp-specialized ones too),
#            SDPA cuDNN and flash, B=4 H=32 D=128 bf16 at N=$PREFILL_N;
#   decode   scripts/bench_decode_ab.py: two launches, fused, fused+tuned, cuDNN;
#   bwd      scripts/bench_bwd_gqa.py: GQA backward at batch 1, group splits;
#   fused    scripts/bench_bwd_fused.py: the 5-product backward against the two kernels, cuDNN;
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
for s in ${STEPS:-prefill decode bwd tests}; do
  case $s in
    probe) step probe "${PROBE_SECONDS:-60}" env FLASHBENCH_TRITON_WS=1 \
             python3 scripts/kernels_ab/ws_probe.py ;;
    prefill) step prefill "${PREFILL_SECONDS:-100}" python3 scripts/bench_prefill.py \
               --seq-len "${PREFILL_N:-4096,16384}" --head-dim 128 --variants '' \
               --out "$OUT/prefill.json" ;;
    decode) step decode "${DECODE_SECONDS:-60}" python3 scripts/bench_decode_ab.py \
              --max-seconds $(( ${DECODE_SECONDS:-60} - 15 )) --out "$OUT/decode_ab.md" ;;
    bwd) step bwd "${BWD_SECONDS:-90}" python3 scripts/bench_bwd_gqa.py \
           --max-seconds $(( ${BWD_SECONDS:-90} - 15 )) --out "$OUT/bwd_gqa.md" ;;
    fused) step fused "${FUSED_SECONDS:-90}" python3 scripts/bench_bwd_fused.py \
             --max-seconds $(( ${FUSED_SECONDS:-90} - 15 )) --out "$OUT/bwd_fused.md" ;;
    tests) step tests "${TESTS_SECONDS:-100}" python3 -m pytest -q -m gpu -p no:cacheprovider \
             ${TESTS:-tests} ;;
  esac
done
