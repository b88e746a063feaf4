"""A plugin whose import reads address 0 (a broken C extension): the importing process dies of SIGSEGV."""

import ctypes

import flashbench

ctypes.string_at(0)


@flashbench.register_backend("never-import-segfault")
def never(q, k, v, *, causal, scale):
    return q
