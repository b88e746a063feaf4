"""``flashbench merge``: the shards of one sweep (``run --shard I/N``) combined into one run folder.

Refused, as bad input, with nothing written: an input that is not a finished shard run, shards
of different configs or splits, a shard given twice, a case in two inputs, shards measured in
different environments (unless ``allow_env_mismatch``), and missing shards (unless
``allow_partial``). The merged run is written under a temporary name beside its destination
and renamed at the end, so it is whole or absent. Its rows are the shards' rows, shard by
shard, each saying which device measured it; its ``meta.json`` says which runs it came from.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from flashbench.core.cases import Case, RunStatus, case_key
from flashbench.core.environment import SAME_SWEEP, environment_differences
from flashbench.core.errors import UserError
from flashbench.results.store import RunFolder, check_root, prepare_root
from flashbench.results.reading import find_run, read_meta, read_rows

__all__ = ["MergeResult", "merge_runs"]


@dataclass
class MergeResult:
    path: Path
    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    def notes(self) -> list[str]:
        """What the merge did, for stderr: environment differences allowed, then a summary."""
        merged = self.meta["merged"]
        count = merged["shards"]
        missing = f"; missing: {', '.join(f'{i}/{count}' for i in merged['missing'])}" \
            if merged["missing"] else ""
        return [*(f"note: environments differ: {n}" for n in merged["environment_differences"]),
                f"merged {len(merged['from'])} of {count} shard(s), {len(self.rows)} rows, "
                f"into {self.path}{missing}"]


@dataclass
class _Shard:
    path: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def index(self) -> int:
        return int(self.meta["shard"]["index"])

    @property
    def count(self) -> int:
        return int(self.meta["shard"]["count"])

    @property
    def name(self) -> str:
        return f"{self.path} (shard {self.index}/{self.count})"


def _load(ref: str | Path, root: Path) -> _Shard:
    path = find_run(ref, root)
    meta = read_meta(path)
    if not isinstance(meta.get("config"), dict) or "run_id" not in meta:
        raise UserError(f"{path} is not a flashbench run (no meta.json with the run's config)")
    if not isinstance(meta.get("shard"), dict):
        raise UserError(f"{path} was not made with --shard; merge combines the shards of one "
                        f"sweep (flashbench run --shard I/N)")
    rows = read_rows(path)
    if meta.get("status") != RunStatus.COMPLETED or len(rows) != meta.get("n_cases"):
        raise UserError(f"{path} is not finished ({meta.get('status')}, {len(rows)} of "
                        f"{meta.get('n_cases')} cases): flashbench run --resume {path} first")
    return _Shard(path, meta, rows)


def _config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def _check_one_sweep(shards: list[_Shard]) -> dict[int, _Shard]:
    """Refuse shards of different splits or configs, or a shard twice; the shards by index."""
    first = shards[0]
    for other in shards[1:]:
        if other.count != first.count:
            raise UserError(f"shards of different splits: {first.name} and {other.name}")
        changed = _config_differences(first.meta["config"], other.meta["config"])
        if changed:
            raise UserError(f"{other.path} has another config than {first.path} "
                            f"({'; '.join(changed)}); only shards of one sweep merge")
    seen: dict[int, _Shard] = {}
    for shard in shards:
        if shard.index in seen:
            raise UserError(f"shard {shard.index}/{shard.count} is given twice: "
                            f"{seen[shard.index].path} and {shard.path}")
        seen[shard.index] = shard
    return seen


def _environment_notes(shards: list[_Shard], allow_env_mismatch: bool) -> list[str]:
    """How the shards' environments differ (SAME_SWEEP), refused unless allowed."""
    first, notes = shards[0], []
    for other in shards[1:]:
        changed = [f"{k} {a!r} vs {b!r}" for k, a, b in environment_differences(
            first.meta.get("environment"), other.meta.get("environment"), SAME_SWEEP)]
        if changed and not allow_env_mismatch:
            raise UserError(f"{other.path} was measured in another environment than "
                            f"{first.path} ({'; '.join(changed)}); pass --allow-env-mismatch "
                            f"to merge anyway")
        notes += [f"{other.path}: {c}" for c in changed]
    return notes


def _check_cases(shards: list[_Shard], complete: bool) -> None:
    """No case in two shards; a complete set holds exactly the sweep's grid."""
    owner: dict[tuple, Path] = {}
    for shard in shards:
        for row in shard.rows:
            key = case_key(row)
            if key in owner:
                raise UserError(f"case {Case.from_dict(row).label()} is in both {owner[key]} "
                                f"and {shard.path}")
            owner[key] = shard.path
    grid = {s.meta["shard"].get("grid_cases") for s in shards}
    total = sum(len(s.rows) for s in shards)
    if complete and len(grid) == 1 and None not in grid and total != grid.pop():
        raise UserError(f"the shards hold {total} cases but the sweep has "
                        f"{shards[0].meta['shard']['grid_cases']}: were they split by "
                        f"different flashbench versions?")


def _check(shards: list[_Shard], allow_env_mismatch: bool, allow_partial: bool) -> list[str]:
    """Refuse what is not one sweep; the environment differences allowed, as notes."""
    seen = _check_one_sweep(shards)
    notes = _environment_notes(shards, allow_env_mismatch)
    count = shards[0].count
    missing = [i for i in range(1, count + 1) if i not in seen]
    if missing and not allow_partial:
        given = ", ".join(f"{i}/{count}" for i in sorted(seen))
        raise UserError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing "
                        f"(given: {given}); pass --allow-partial to merge those given")
    _check_cases(shards, complete=not missing)
    return notes


def _merged_meta(shards: list[_Shard], out: Path, rows: list[dict[str, Any]],
                 notes: list[str], command: list[str]) -> dict[str, Any]:
    first = shards[0]
    count = first.count
    missing = sorted(set(range(1, count + 1)) - {s.index for s in shards})
    plugins = list(dict.fromkeys(p for s in shards for p in s.meta.get("plugins", [])))
    return {
        "run_id": out.name, "status": RunStatus.PARTIAL if missing else RunStatus.COMPLETED,
        "started_at": min(str(s.meta.get("started_at")) for s in shards),
        "finished_at": max(str(s.meta.get("finished_at")) for s in shards),
        "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
        "config": first.meta["config"], "n_cases": len(rows), "plugins": plugins,
        "isolated": all(s.meta.get("isolated", False) for s in shards),
        "environment": first.meta.get("environment", {}),
        "merged": {
            "shards": count, "missing": missing, "environment_differences": notes,
            "from": [{"run": str(s.path), "run_id": s.meta["run_id"],
                      "shard": f"{s.index}/{count}", "n_cases": len(s.rows),
                      "started_at": s.meta.get("started_at"),
                      "finished_at": s.meta.get("finished_at"),
                      "gpu_name": s.meta.get("environment", {}).get("gpu_name"),
                      "gpu_uuid": s.meta.get("environment", {}).get("gpu_uuid"),
                      "devices": s.meta.get("devices"),
                      "load_before": s.meta.get("load_before"),
                      "load_after": s.meta.get("load_after")} for s in shards],
        },
    }


def _write(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """The run folder under a temporary name beside ``out``, renamed to ``out`` when whole."""
    tmp = out.with_name(f".{out.name}.merging-{os.getpid()}")
    try:
        tmp.mkdir()
        folder = RunFolder(tmp)
        with open(folder.results_path, "w") as f:
            f.writelines(json.dumps(row, default=str) + "\n" for row in rows)
            f.flush()
            os.fsync(f.fileno())
        folder.write_meta(meta)
        os.rename(tmp, out)  # atomic: out is whole or absent
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the merged run {out}: {e.strerror}") from None


def merge_runs(refs: Sequence[str | Path], out: Path, *, root: Path = Path("results"),
               allow_env_mismatch: bool = False, allow_partial: bool = False,
               command: list[str] | None = None) -> MergeResult:
    """Merge shard runs (folders, or ids under ``root``) into the new run folder ``out``."""
    if not refs:
        raise UserError("merge needs the shard runs to combine")
    if out.exists():
        raise UserError(f"{out} already exists; the merged run needs a new folder")
    check_root(out.parent)
    shards = [_load(ref, root) for ref in refs]
    paths = [s.path.resolve() for s in shards]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise UserError(f"{shards[i].path} is given twice")
    notes = _check(shards, allow_env_mismatch, allow_partial)
    shards.sort(key=lambda s: s.index)
    rows = [row for s in shards for row in s.rows]
    meta = _merged_meta(shards, out, rows, notes,
                        command if command is not None else sys.argv)
    prepare_root(out.parent)
    _write(out, rows, meta)
    return MergeResult(out, rows, meta)
