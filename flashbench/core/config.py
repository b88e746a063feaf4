"""Sweep configuration: YAML presets and files, validated, overridden by flags, expanded to cases."""

from __future__ import annotations

import itertools
import math
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, StrictBool, StrictFloat,
                      StrictInt, ValidationError, field_validator, model_validator)

from flashbench.core import ragged, registry, safe_yaml
from flashbench.core.cases import Mode
from flashbench.core.errors import UserError, did_you_mean, quoted

__all__ = [
    "MAX_CASES",
    "SweepConfig",
    "TimingPolicy",
    "format_validation_error",
    "list_presets",
    "load_config",
    "requested_device",
    "validate_config",
]

# The axes whose product is the grid, and the most cases one sweep may hold: the largest
# preset has 288; at a second a case, 100,000 take a day and more.
AXES = ("backends", "mode", "batch", "heads", "kv_heads", "seq_len", "kv_len", "head_dim",
         "dtype", "causal", "window", "softcap", "seq_lens", "page_size")
MAX_CASES = 100_000
# Sizes beyond these are typos, not experiments (a 2^24-token sequence is already 16M tokens).
MAX_SIZE = {"batch": 1 << 16, "heads": 1024, "kv_heads": 1024, "seq_len": 1 << 24,
        "kv_len": 1 << 24, "head_dim": 1024}


class TimingPolicy(BaseModel):
    """How one case is sampled (flashbench.measure.timing): the config's ``timing`` key, sent
    to the worker as JSON and read back as this type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Strict numbers: YAML's true is not 1 (pydantic would take it as 1 otherwise).
    l2: Literal["cold", "hot"] = "cold"  # cold: a buffer twice the L2 written before each sample
    warmup_ms: StrictFloat = Field(25.0, ge=0)
    budget_ms: StrictFloat = Field(1000.0, gt=0)  # stop sampling after this, if min_samples are in
    min_samples: StrictInt = Field(10, ge=1)
    max_samples: StrictInt = Field(1000, ge=1)
    target_rse: StrictFloat = Field(0.01, gt=0, lt=1)  # stop once the median's error is this
    # Sample for at least this long (a power-capped card changes clocks every few 10 ms), and
    # until the SM clock is steady, whatever the RSE says.
    min_window_ms: StrictFloat = Field(100.0, ge=0)
    # And, within budget_ms and max_samples, until check could see a slowdown of this share
    # between two runs with these samples (flashbench.core.stats.aa_detectable): a gate at
    # this threshold is then not blind to the case. None (off): the rules above alone. Below
    # 10 (1000%), as check's --threshold.
    detect: Annotated[StrictFloat, Field(gt=0, lt=10)] | None = 0.05
    # events: a CUDA event pair per call; graph: a batch of calls replayed from one CUDA graph
    # (kernels under ~20 us); profiler: the device time of the kernels a call launches.
    timer: Literal["events", "graph", "profiler"] = "events"
    # The backends of one shape sampled in alternating rounds (A B C, B C A, ...), so that a
    # clock change hits them alike; False: one backend after another.
    interleave: StrictBool = True
    # CPU only: torch's intra-op threads while timing (1: a loaded machine's threads do not
    # contend); None leaves torch's default.
    threads: Annotated[StrictInt, Field(ge=1)] | None = 1

    @field_validator("detect", mode="before")
    @classmethod
    def _off_is_none(cls, value: Any) -> Any:
        # YAML reads a bare `off` as false; `--detect off` arrives as the word.
        return None if value is False or value == "off" else value

    @model_validator(mode="after")
    def _min_within_max(self) -> TimingPolicy:
        if self.min_samples > self.max_samples:
            raise ValueError(f"min_samples ({self.min_samples}) must be at most max_samples "
                             f"({self.max_samples})")
        return self


class SweepConfig(BaseModel):
    """A sweep: every axis is a list (a scalar in YAML means a list of one); cases are the grid.

    Sizes are strict integers and masks strict booleans: YAML's ``true`` is no length, ``1``
    no mask, and ``16.0`` no head count."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    description: str = ""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    backends: list[str] = Field(default_factory=lambda: ["triton", "sdpa", "naive"], min_length=1)
    mode: list[Mode] = Field(default_factory=lambda: [Mode.FWD], min_length=1)
    batch: list[StrictInt] = Field(default_factory=lambda: [4], min_length=1)
    heads: list[StrictInt] = Field(default_factory=lambda: [32], min_length=1)
    kv_heads: list[StrictInt | None] = Field(default_factory=lambda: [None], min_length=1)
    seq_len: list[StrictInt] = Field(default_factory=lambda: [1024], min_length=1)
    kv_len: list[StrictInt | None] = Field(default_factory=lambda: [None], min_length=1)
    head_dim: list[StrictInt] = Field(default_factory=lambda: [128], min_length=1)
    dtype: list[Literal["fp16", "bf16", "fp32"]] = Field(default_factory=lambda: ["bf16"],
                                                        min_length=1)
    causal: list[StrictBool] = Field(default_factory=lambda: [False], min_length=1)
    # The attention people deploy; null in a list is the dense case. window: a sliding window
    # of this many keys left of the causal diagonal (combined with causal: true only);
    # softcap: scores capped as c·tanh(s/c); seq_lens: a ragged batch, a list of lengths or
    # {dist: lognormal|uniform, mean, max, seed} drawn once per batch size (seq_len and
    # kv_len then follow the lengths); page_size: the KV cache in pages (mode fwd).
    window: list[Annotated[StrictInt, Field(ge=0, le=1 << 24)] | None] = Field(
        default_factory=lambda: [None], min_length=1)
    softcap: list[Annotated[float, Field(gt=0, le=1e6)] | None] = Field(
        default_factory=lambda: [None], min_length=1)
    seq_lens: list[Any] = Field(default_factory=lambda: [None], min_length=1)
    page_size: list[Annotated[StrictInt, Field(ge=1, le=1 << 16)] | None] = Field(
        default_factory=lambda: [None], min_length=1)
    timing: TimingPolicy = Field(default_factory=TimingPolicy)
    # What our kernels' fp32 matmuls run as: TF32 tensor cores (rel. error ~1e-3) or IEEE fp32.
    fp32_precision: Literal["tf32", "ieee"] = "tf32"
    # Beyond this a case is a hang: its worker is killed and replaced (at most a day).
    case_timeout_s: StrictFloat = Field(600.0, gt=0, le=86400)
    # Several grids in one sweep (a model's ragged prefill and its paged decode): each entry
    # sets some of the grid keys (AXES) over the ones above; the cases are the union of the
    # entries' grids, and the keys above are only their defaults.
    sweeps: list[dict[str, Any]] | None = Field(None, min_length=1, max_length=64)
    _parts: list[SweepConfig] = PrivateAttr(default_factory=list)

    @field_validator("backends", "mode", "batch", "heads", "kv_heads", "seq_len", "kv_len",
                     "head_dim", "dtype", "causal", "window", "softcap", "page_size",
                     mode="before")
    @classmethod
    def _scalar_is_a_list_of_one(cls, value: Any) -> Any:
        return value if isinstance(value, list) else [value]

    @field_validator("seq_lens", mode="before")
    @classmethod
    def _one_ragged_batch_is_a_list_of_one(cls, value: Any) -> Any:
        # [512, 1024] is one ragged batch (a list of lengths), not two specs: a list of specs
        # holds a null, a mapping or a list.
        if isinstance(value, list) and value and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [value]
        return value if isinstance(value, list) else [value]

    @field_validator("seq_lens")
    @classmethod
    def _ragged_specs(cls, specs: list[Any]) -> list[str | None]:
        try:
            return list(dict.fromkeys(None if s is None else ragged.canonical(s) for s in specs))
        except ragged.RaggedError as e:
            raise ValueError(str(e)) from None

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, names: list[str]) -> list[str]:
        # Plugins register their names when loaded, which is why they load before validation.
        known = registry.names()
        for name in names:
            if name not in known:
                raise ValueError(f"unknown backend {quoted(name)}{did_you_mean(name, known)};"
                                 f" allowed: {', '.join(known)} (or a plugin's: --plugin FILE)")
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _sweep_parts(self) -> SweepConfig:
        if self.sweeps is None:
            return self
        base = self.model_dump(exclude={"sweeps"})
        for i, part in enumerate(self.sweeps):
            unknown = [k for k in part if k not in AXES]
            if unknown:
                raise ValueError(f"sweeps[{i}]: {quoted(unknown[0])} is not a grid key; an "
                                 f"entry sets some of {', '.join(AXES)}")
            try:
                self._parts.append(SweepConfig.model_validate(base | part))
            except ValidationError as e:
                raise ValueError(f"sweeps[{i}]: {format_validation_error(e, 'entry')}"
                                 .replace("entry: ", "", 1)) from None
        return self

    @property
    def grids(self) -> list[SweepConfig]:
        """The grids whose union is the sweep: its sweeps entries, or itself."""
        return self._parts or [self]

    @field_validator("batch", "heads", "kv_heads", "seq_len", "kv_len", "head_dim")
    @classmethod
    def _sizes_in_range(cls, values: list[int | None], info) -> list[int | None]:
        limit = MAX_SIZE[info.field_name]
        for v in values:
            if v is not None and not 1 <= v <= limit:
                raise ValueError(f"must be between 1 and {limit}, got {v}")
        return values


def format_validation_error(err: ValidationError, source: str) -> str:
    """The first problem, as one line naming the field and what is allowed."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not isinstance(p, int)) or "config"
    kind, msg = first["type"], first["msg"]
    # The input is quoted short: it can be any size (a list of a thousand lists).
    if kind == "extra_forbidden":
        key = str(first["loc"][-1])
        parent = SweepConfig if len(first["loc"]) == 1 else TimingPolicy
        allowed = list(parent.model_fields)
        return (f"{source}: unknown key {quoted(key)}{did_you_mean(key, allowed)}; "
                f"allowed keys: {', '.join(allowed)}")
    if kind in ("literal_error", "enum"):
        return f"{source}: {loc}: {quoted(first['input'])} is not allowed; {msg.lower()}"
    msg = " ".join(msg.removeprefix("Value error, ").split())
    # flashbench's own checks name the value already; a check of several keys at once (a
    # mapping as input) names the keys: nothing more to quote.
    if kind == "value_error" or "got" in msg or isinstance(first["input"], dict):
        return f"{source}: {loc}: {msg}"
    return f"{source}: {loc}: {msg} (got {quoted(first['input'])})"


# Presets renamed for what they are; the old names still work, with a note.
RENAMED_PRESETS = {"h100-prefill": "prefill", "h100-train": "train"}
_NOTED: set[str] = set()


def list_presets() -> list[str]:
    files = resources.files("flashbench.configs")
    return sorted(p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml"))


def _read_file(path: Path, config: str) -> str:
    """A config file's text; bad input when it is missing, unreadable or not UTF-8."""
    if path.is_dir():
        raise UserError(f"config {config} is a folder, not a YAML file")
    if not path.is_file():
        raise UserError(f"config file not found: {config}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read config {config}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{config}: not UTF-8 text (byte {data[e.start]:#04x} at line {line}); "
                        f"a config is a YAML file in UTF-8") from None


def _read_source(config: str) -> tuple[dict, str]:
    path = Path(config)
    if path.suffix in (".yaml", ".yml") or path.exists():
        text, source = _read_file(path, config), str(path)
    else:
        if config in RENAMED_PRESETS:
            if config not in _NOTED:
                _NOTED.add(config)
                print(f"note: preset {config!r} is now called {RENAMED_PRESETS[config]!r}",
                      file=sys.stderr)
            config = RENAMED_PRESETS[config]
        presets = list_presets()
        if config not in presets:
            raise UserError(f"unknown preset {config!r}{did_you_mean(config, presets)}; "
                            f"presets: {', '.join(presets)} (or give a YAML file path)")
        text = (resources.files("flashbench.configs") / f"{config}.yaml").read_text()
        source = f"preset {config}"
    try:
        data = safe_yaml.load(text)
    except safe_yaml.YamlRefused as e:
        raise UserError(f"{source}: {e}") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply; a config is a mapping of keys to values "
                        f"and lists") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{source}: YAML syntax error{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of keys to values at the top level")
    return data, source


def load_config(config: str, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read a preset name or YAML file, apply flag overrides (None means 'not given'), validate."""
    data, source = _read_source(config)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in TimingPolicy.model_fields:
            data.setdefault("timing", {})
            if isinstance(data["timing"], dict):
                data["timing"][key] = value
            continue
        data[key] = value
        # A flag wins over every part of a config of several sweeps, not only its defaults.
        if key in AXES and isinstance(data.get("sweeps"), list):
            for part in data["sweeps"]:
                if isinstance(part, dict):
                    part[key] = value
    return validate_config(data, source)


def validate_config(data: dict[str, Any], source: str) -> SweepConfig:
    """A config from plain data, or bad input naming ``source`` and the field that is wrong."""
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, source)) from None
    for grid in cfg.grids:
        _check_head_groups(grid, source)
        _check_grid_size(grid, source)
        _check_combinations(grid, source)
    if sum(_grid_size(grid) for grid in cfg.grids) > MAX_CASES:
        raise UserError(f"{source}: the sweeps hold more than {MAX_CASES:,} cases; at most "
                        f"{MAX_CASES:,} in one sweep")
    return cfg


def requested_device(config: str, override: str | None = None) -> str:
    """The device a config asks for, read before validation (plugins may need it to load).

    Anything unreadable gives 'auto'; load_config reports the problem properly afterwards.
    """
    if override is not None:
        return override
    try:
        data, _ = _read_source(config)
    except UserError:
        return "auto"
    device = data.get("device", "auto")
    return device if device in ("auto", "cuda", "cpu") else "auto"


def _check_head_groups(cfg: SweepConfig, source: str) -> None:
    for heads, kv_heads in itertools.product(cfg.heads, cfg.kv_heads):
        if kv_heads is not None and heads % kv_heads != 0:
            raise UserError(f"{source}: heads ({heads}) must be a multiple of kv_heads "
                            f"({kv_heads}) for grouped-query attention")


def _check_combinations(cfg: SweepConfig, source: str) -> None:
    """Refuse a value no case can use (expand_cases leaves meaningless combinations out)."""
    if any(w is not None for w in cfg.window) and True not in cfg.causal:
        raise UserError(f"{source}: window needs causal: true (a sliding window is the causal "
                        f"mask with a left limit)")
    if any(p is not None for p in cfg.page_size):
        if Mode.FWD not in cfg.mode:
            raise UserError(f"{source}: page_size needs mode fwd (a paged KV cache is an "
                            f"inference cache: decode and prefill against it, no backward)")
        if None not in cfg.page_size and None not in cfg.seq_lens:
            raise UserError(f"{source}: seq_lens (a ragged batch) and page_size (a paged cache) "
                            f"do not combine; give null in one of them")
    for spec in cfg.seq_lens:
        if spec is not None and any(len(lens) > MAX_SIZE["batch"]
                                    for lens in ragged.expand(spec, cfg.batch)):
            raise UserError(f"{source}: seq_lens: at most {MAX_SIZE['batch']} sequences")


def _check_grid_size(cfg: SweepConfig, source: str) -> None:
    """Refuse a grid too large to ever finish, before it is expanded (ten axes of twenty
    values are 10^13 cases, which a 200-byte file can ask for)."""
    size = _grid_size(cfg)
    if size > MAX_CASES:
        raise UserError(f"{source}: the grid has {size:,} cases (the product of the lengths of "
                        f"{', '.join(AXES)}); at most {MAX_CASES:,} in one sweep")


def _grid_size(cfg: SweepConfig) -> int:
    """The product of the grid's axis lengths: what it holds at most (before combinations
    that mean nothing are left out)."""
    return math.prod(len(dict.fromkeys(getattr(cfg, axis))) for axis in AXES)
