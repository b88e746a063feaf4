"""Where a flash kernel's extra DRAM reads come from: L2 read requests and hit rate beside DRAM.

For each backend and mask, one call of `flashbench profile`'s case (B=4, H=16, N=4096, D=128,
bf16) under ncu, reading dram__bytes_read.sum, the L2's read sectors from the SMs and its read
hit rate. If a kernel's DRAM reads exceed Q+K+V because its K/V re-reads miss the L2, its hit
rate is lower while its L2 read traffic is about the same.

Usage: python scripts/l2_check.py [backend ...]   (on a GPU with Nsight Compute)
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from flashbench.core.cases import Case, Mode
from flashbench.measure.profile import find_ncu

METRICS = ("dram__bytes_read.sum", "lts__t_sectors_srcunit_tex_op_read.sum",
           "lts__t_sector_op_read_hit_rate.pct")


def measure(ncu: str, case: Case) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "ncu.csv"
        subprocess.run([ncu, "--clock-control", "none", "--profile-from-start", "off",
                        "--metrics", ",".join(METRICS), "--csv", "--print-units", "base",
                        "--log-file", str(log), sys.executable, "-m", "flashbench.measure.profile_target",
                        json.dumps(case.to_dict())], check=True, capture_output=True)
        lines = [line for line in log.read_text().splitlines() if line.startswith('"')]
    import csv

    values: dict[str, float] = {}
    for row in csv.DictReader(lines):
        values[row["Metric Name"]] = float(row["Metric Value"].replace(",", ""))
    return values


def main(backends: list[str]) -> int:
    ncu = find_ncu()
    print("| backend | mask | DRAM read GB | L2 read GB (from SMs) | L2 read hit rate |")
    print("| --- | --- | --- | --- | --- |")
    for backend in backends or ["sdpa-flash", "triton"]:
        for causal in (False, True):
            case = Case(backend=backend, mode=Mode.FWD, batch=4, heads=16, kv_heads=16,
                        seq_len=4096, kv_len=4096, head_dim=128, dtype="bf16", causal=causal)
            v = measure(ncu, case)
            print(f"| {backend} | {'causal' if causal else 'full'} | "
                  f"{v[METRICS[0]] / 1e9:.3f} | {v[METRICS[1]] * 32 / 1e9:.3f} | "
                  f"{v[METRICS[2]]:.1f} % |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
