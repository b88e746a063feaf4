"""Plugin backends that fail on a GPU for real: an illegal memory access, a hung kernel, an allocation beyond free memory.

Each notes the pid of the process it runs in (in $FLASHBENCH_TEST_PIDFILE, when set), so that a
test can tell a replaced worker from the same one.
"""

import os

import triton
import triton.language as tl

import flashbench


def _note_pid(name: str) -> None:
    path = os.environ.get("FLASHBENCH_TEST_PIDFILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{name} {os.getpid()}\n")


@triton.jit
def _store_far_away(ptr):
    # 2**40 float32 elements (4 TiB) past the buffer: an address no allocation maps.
    offsets = tl.arange(0, 16).to(tl.int64) + (1 << 40)
    tl.store(ptr + offsets, tl.zeros([16], dtype=tl.float32))


@triton.jit
def _spin_until_set(flag_ptr, out_ptr):
    # The flag is zero and nothing ever sets it: the kernel never ends.
    spins = 0
    while tl.load(flag_ptr, volatile=True) == 0:
        spins += 1
    tl.store(out_ptr, spins)


@flashbench.register_backend("gpu-illegal-address")
def illegal_address(q, k, v, *, causal, scale):
    """A Triton kernel that stores 4 TiB past its buffer: an illegal memory access."""
    import torch

    _note_pid("gpu-illegal-address")
    buffer = torch.empty(16, device=q.device, dtype=torch.float32)
    _store_far_away[(1,)](buffer)
    torch.cuda.synchronize(q.device)
    return q


@flashbench.register_backend("gpu-spin")
def spin(q, k, v, *, causal, scale):
    """A Triton kernel that waits forever for a flag: a hung GPU."""
    import torch

    _note_pid("gpu-spin")
    flag = torch.zeros(1, device=q.device, dtype=torch.int32)
    out = torch.zeros(1, device=q.device, dtype=torch.int32)
    _spin_until_set[(1,)](flag, out)
    torch.cuda.synchronize(q.device)
    return q


@flashbench.register_backend("gpu-oom")
def out_of_memory(q, k, v, *, causal, scale):
    """Allocates 1 GiB more than the device has free: a real torch.OutOfMemoryError."""
    import torch

    _note_pid("gpu-oom")
    free, _ = torch.cuda.mem_get_info(q.device)
    torch.empty(free + (1 << 30), dtype=torch.uint8, device=q.device)
    return q


@flashbench.register_backend("gpu-sdpa")
def sdpa(q, k, v, *, causal, scale):
    """PyTorch SDPA, noting its pid."""
    import torch.nn.functional as F

    _note_pid("gpu-sdpa")
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)
