"""Ragged batches: sequence lengths given as a list or as a seeded distribution, and their one spelling.

A ragged case packs sequences of different lengths without padding (``cu_seqlens``). Its case
field ``ragged`` is the canonical text of what the config asked for, e.g.
``lognormal(mean=2048,max=8192,seed=0)`` or ``lens(512,1024,3000)``: short enough for a table,
and enough to rebuild the lengths anywhere (the worker gets the case, not the lengths). The
expansion draws from ``random.Random(seed).random()``, whose stream Python keeps the same across
versions, through transforms written here, so a baseline from last year still means the same
lengths.
"""

from __future__ import annotations

import math
import random
import re
from functools import lru_cache
from typing import Any

__all__ = ["DISTRIBUTIONS", "RaggedError", "canonical", "expand", "lengths"]

DISTRIBUTIONS = ("lognormal", "uniform")
# The spread of a lognormal's logarithm: lengths of a chat or document corpus span about an
# order of magnitude around their mean (σ = 0.6 puts 90% of them within ×0.37–×2.7 of the median).
LOGNORMAL_SIGMA = 0.6
_MAX_LEN = 1 << 24
_SPEC = re.compile(r"^(lens|lognormal|uniform)\((.*)\)$")


class RaggedError(ValueError):
    """A ``seq_lens`` value that is no list of lengths and no distribution flashbench knows."""


def canonical(spec: Any) -> str:
    """The case field's text for a config's ``seq_lens`` entry: a list of lengths or a mapping
    ``{dist, mean, max, seed}`` (uniform may give ``min`` instead of ``mean``), or that text
    itself (a run's meta.json keeps the config validated, so a resume reads the text back)."""
    if isinstance(spec, str):
        kind, params = _parse(spec)
        return canonical(params if kind == "lens" else {"dist": kind, **params})
    if isinstance(spec, list):
        if not spec:
            raise RaggedError("an empty list of sequence lengths")
        for n in spec:
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= _MAX_LEN:
                raise RaggedError(f"sequence lengths are integers from 1 to {_MAX_LEN}, got {n!r}")
        return f"lens({','.join(str(n) for n in spec)})"
    if not isinstance(spec, dict):
        raise RaggedError(f"expected a list of lengths or a mapping with 'dist', got {spec!r}")
    dist = spec.get("dist")
    if dist not in DISTRIBUTIONS:
        raise RaggedError(f"dist must be one of {', '.join(DISTRIBUTIONS)}, got {dist!r}")
    allowed = {"dist", "mean", "max", "seed"} | ({"min"} if dist == "uniform" else set())
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise RaggedError(f"unknown key {unknown[0]!r} for dist {dist}; allowed: "
                          f"{', '.join(sorted(allowed))}")
    fields = {"max": spec.get("max"), "seed": spec.get("seed", 0)}
    if dist == "uniform" and "min" in spec:
        fields = {"min": spec["min"]} | fields
    else:
        fields = {"mean": spec.get("mean")} | fields
    for key, value in fields.items():
        low = 0 if key == "seed" else 1
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= _MAX_LEN:
            raise RaggedError(f"{dist}: {key} must be an integer from {low} to {_MAX_LEN}, "
                              f"got {value!r}")
    bound = fields.get("mean", fields.get("min"))
    if bound > fields["max"]:
        raise RaggedError(f"{dist}: {'mean' if 'mean' in fields else 'min'} ({bound}) is "
                          f"above max ({fields['max']})")
    return f"{dist}({','.join(f'{k}={v}' for k, v in fields.items())})"


def _parse(text: str) -> tuple[str, dict[str, int] | list[int]]:
    match = _SPEC.match(text)
    if not match:
        raise RaggedError(f"not a ragged batch: {text!r}")
    kind, body = match.groups()
    try:
        if kind == "lens":
            return kind, [int(x) for x in body.split(",")]
        return kind, {k: int(v) for k, v in (item.split("=") for item in body.split(","))}
    except ValueError:
        raise RaggedError(f"not a ragged batch: {text!r}") from None


def _normal(rng: random.Random) -> float:
    """A standard normal by Box–Muller on random(), the one stream Python keeps stable."""
    u1 = 1.0 - rng.random()  # (0, 1]: log(0) never happens
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * rng.random())


def _draw(kind: str, p: dict[str, int], rng: random.Random) -> int:
    if kind == "lognormal":
        # The mean of exp(N(mu, σ²)) is exp(mu + σ²/2): mu is chosen so the mean is p["mean"]
        # before clipping (clipping at max pulls it down a little; the row says the real total).
        mu = math.log(p["mean"]) - LOGNORMAL_SIGMA ** 2 / 2
        x = math.exp(mu + LOGNORMAL_SIGMA * _normal(rng))
    else:
        low = p["min"] if "min" in p else max(1, 2 * p["mean"] - p["max"])
        x = low + (p["max"] - low + 1) * rng.random()
    return int(min(max(round(x), 1), p["max"]))


@lru_cache(maxsize=256)
def lengths(text: str, batch: int) -> tuple[int, ...]:
    """The sequence lengths of a ragged case: the listed ones, or ``batch`` seeded draws."""
    kind, params = _parse(text)
    if kind == "lens":
        return tuple(params)  # type: ignore[arg-type]
    rng = random.Random(params["seed"])  # type: ignore[index]
    return tuple(_draw(kind, params, rng) for _ in range(batch))  # type: ignore[arg-type]


def expand(text: str, batches: list[int]) -> list[tuple[int, ...]]:
    """The length lists a ragged spec gives over the config's batch axis: a list of lengths
    fixes its own batch; a distribution draws each batch size."""
    if text.startswith("lens("):
        return [lengths(text, 0)]
    return [lengths(text, b) for b in dict.fromkeys(batches)]
