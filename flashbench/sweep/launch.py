"""``flashbench run`` as a library call: the flags become a config (or a resume), plugins load once, the sweep runs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flashbench.core.config import load_config, requested_device
from flashbench.core.errors import UserError
from flashbench.core.plugins import load_plugins
from flashbench.sweep.devices import default_preset
from flashbench.sweep.runner import SweepOptions, SweepResult, resume_sweep, run_sweep
from flashbench.sweep.shard import parse_shard

__all__ = ["SweepRequest", "launch"]


@dataclass(frozen=True)
class SweepRequest:
    """What ``flashbench run`` was asked: a config (or a run to resume) and the flags over it."""

    out: Path
    config: str | None = None  # preset name or YAML file; None: the default for this machine
    overrides: dict[str, Any] = field(default_factory=dict)  # axis and timing flags; None: unset
    resume: str | None = None
    shard: str | None = None
    options: SweepOptions = field(default_factory=SweepOptions)

    @property
    def case_timeout_s(self) -> float | None:
        return self.overrides.get("case_timeout_s")


def _resume_conflicts(request: SweepRequest) -> list[str]:
    """The flags a resume cannot take: the run's own config decides its cases."""
    given = [f"--{k.replace('_', '-')}" for k, v in request.overrides.items()
             if v is not None and k != "case_timeout_s"]
    return given + (["--config"] if request.config else []) \
        + (["--shard"] if request.shard is not None else [])


def launch(request: SweepRequest) -> SweepResult:
    """Run (or resume) the sweep a request describes; UserError for bad input, nothing run."""
    options = request.options
    if request.resume is not None:
        conflicts = _resume_conflicts(request)
        if conflicts:
            raise UserError(f"--resume runs the rest of the run's own config; drop "
                            f"{', '.join(conflicts)}")
        return resume_sweep(request.resume, request.out, options, request.case_timeout_s)
    part = None if request.shard is None else parse_shard(request.shard)
    device = request.overrides.get("device")
    devices = options.devices if isinstance(options.devices, str) or options.devices is None \
        else ",".join(options.devices)
    config = request.config or default_preset(device, devices)
    if not options.isolate:
        from flashbench.measure.device import select_device

        # In this process the device comes first: on a CPU it sets TRITON_INTERPRET before a
        # plugin can import triton.
        select_device(requested_device(config, device))
    plugins = load_plugins(list(options.plugins))  # before the config: plugins add backend names
    cfg = load_config(config, request.overrides)
    return run_sweep(cfg, request.out, replace(options, plugins=plugins), part)
