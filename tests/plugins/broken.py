"""A plugin whose import fails: it needs a package that is not installed."""

import flashbench_no_such_dependency  # noqa: F401

import flashbench


@flashbench.register_backend("never-registered")
def never(q, k, v, *, causal, scale):
    return q
