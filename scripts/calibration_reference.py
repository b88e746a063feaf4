"""Check `flashbench calibrate` against the usual way of measuring the same two ceilings.

The usual way: an 8192×8192×8192 bf16 product through torch (three warm-up products, then the
mean of ten back to back between two CUDA events) and a 4 GiB device-to-device copy timed the
same way, counting the bytes read and written. Prints both beside this GPU's cached
calibration and exits 1 if either differs by more than 5 %.

Usage: python scripts/calibration_reference.py  (after `flashbench calibrate` on the same GPU)
"""

import json
import sys

import torch

from flashbench.measure.machine import capture_environment


def mean_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> int:
    device = torch.device("cuda", torch.cuda.current_device())
    record = capture_environment(device)["ceilings"]
    if record is None:
        print("no calibration cached for this GPU: run `flashbench calibrate` first")
        return 2
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    matmul_tflops = 2 * n**3 / (mean_ms(lambda: a @ b) / 1e3) / 1e12
    c = torch.empty_like(a)
    # The same product into a preallocated output, for comparison only (not checked).
    out_tflops = 2 * n**3 / (mean_ms(lambda: torch.matmul(a, b, out=c)) / 1e3) / 1e12
    nbytes = 4 << 30
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_gbps = 2 * nbytes / (mean_ms(lambda: dst.copy_(src)) / 1e3) / 1e9
    checks = [("matmul bf16 TFLOP/s", matmul_tflops, record["matmul_tflops"]["bf16"]),
              ("copy GB/s (read + write)", copy_gbps, record["copy_gbps"])]
    print("| ceiling | usual way | flashbench calibrate | calibrate / usual |")
    print("| --- | --- | --- | --- |")
    for name, usual, calibrated in checks:
        print(f"| {name} | {usual:,.1f} | {calibrated:,.1f} | {calibrated / usual:.3f} |")
    print(f"| (matmul bf16 with out=, usual way) | {out_tflops:,.1f} | | |")
    print(json.dumps({"reference": {"matmul_bf16_tflops": matmul_tflops, "copy_gbps": copy_gbps,
                                    "matmul_bf16_out_tflops": out_tflops},
                      "calibration": record}, indent=1))
    return 0 if all(abs(c / u - 1) <= 0.05 for _, u, c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
