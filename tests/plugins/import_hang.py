"""A plugin whose import never finishes (a lock that is never released)."""

import time

import flashbench

time.sleep(3600)


@flashbench.register_backend("never-import-hang")
def never(q, k, v, *, causal, scale):
    return q
