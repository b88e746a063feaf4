"""The call Nsight Compute profiles: one case, prepared outside the profiled range, run once inside.

Started by flashbench.measure.profile under ``ncu --profile-from-start off``: tuning, compilation and
the first call happen before cudaProfilerStart, so the counters see exactly one call.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    import torch

    from flashbench.core.cases import Case
    from flashbench.measure.case import case_call
    from flashbench.measure.device import select_device

    case = Case.from_dict(json.loads(argv[0]))
    device = select_device("cuda")
    run = case_call(case, device)  # prepared, and called once: tuned, compiled, warm
    torch.cuda.synchronize(device)
    torch.cuda.cudart().cudaProfilerStart()
    run()
    torch.cuda.synchronize(device)
    torch.cuda.cudart().cudaProfilerStop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
