"""Reference math and a call log for the fake flash_attn and flashinfer packages.

The fakes stand in for packages that are installed on no machine the tests run on: they take
the arguments the real functions take, refuse what the real ones refuse (fp32, a page size
flash-attn's paged kernel cannot take), compute plain softmax attention in fp32 with the
masks as the real packages document them (written here from their docstrings, not from
flashbench's code), and log each distinct call to the file named by FLASHBENCH_FAKE_CALLS,
one JSON object a line, so that a test can check what flashbench passed.
"""

import json
import os

import torch

_SEEN: set = set()


def log(function: str, **fields) -> None:
    path = os.environ.get("FLASHBENCH_FAKE_CALLS")
    line = json.dumps({"function": function} | fields, sort_keys=True)
    if path and line not in _SEEN:
        _SEEN.add(line)
        with open(path, "a") as f:
            f.write(line + "\n")


def describe(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "stride": list(t.stride()), "dtype": str(t.dtype)}


def check_half(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
        if t.stride(-1) != 1:
            raise RuntimeError("Input tensor must have contiguous last dimension")


def attend(q, k, v, *, scale, causal, window_left=-1, window_right=-1, softcap=0.0):
    """One sequence: q (Sq, H, D), k and v (Sk, Hkv, D); the causal diagonal and the window
    aligned to the bottom right (query i at key position i + Sk - Sq). Returns (Sq, H, D)."""
    sq, heads, _ = q.shape
    sk, kv_heads, _ = k.shape
    group = heads // kv_heads
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.float(), kf) * scale
    if softcap and softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq).unsqueeze(1) + (sk - sq)
    j = torch.arange(sk).unsqueeze(0)
    keep = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        keep &= j <= i
    if window_left >= 0:
        keep &= j >= i - window_left
    if window_right >= 0:
        keep &= j <= i + window_right
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", p, vf).to(q.dtype)
