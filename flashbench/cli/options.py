"""What several commands parse alike: comma-separated lists, choices, shared options, output files."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from flashbench.core.errors import UserError, did_you_mean

__all__ = ["PLUGINS", "PROGRESS", "RESULTS_DIR", "choice", "int_list", "shape_flag", "str_list",
           "write_output"]

PLUGINS = typer.Option(None, "--plugin", metavar="FILE",
                       help="A Python file that registers backends with "
                            "@flashbench.register_backend (repeatable).")
RESULTS_DIR = typer.Option(Path("results"), "--results-dir",
                           help="Where run ids and the latest run are looked up.")
PROGRESS = typer.Option(True, "--progress/--no-progress",
                        help="Progress on stderr: a bar in a terminal, one line per finished "
                             "step elsewhere (CI logs, batch jobs).")


# The case flags `run` (lists) and `profile` (one value each, with the defaults of
# flashbench.measure.profile.DEFAULT_PROFILE) share: declared once, for both.
_SHAPE_FLAGS: dict[str, tuple[str, str]] = {
    "backends": ("Comma-separated backends, e.g. triton,sdpa-cudnn,naive.",
                 "Comma-separated backends [default: naive,sdpa-flash,triton]."),
    "seq_len": ("Query lengths, e.g. 1024,2048.", "Query length [default: 4096]."),
    "kv_len": ("KV lengths [default: the query length].",
               "KV length [default: the query length]."),
    "heads": ("Query heads.", "Query heads [default: 16]."),
    "kv_heads": ("KV heads (fewer than heads: GQA/MQA).", "KV heads [default: heads]."),
    "head_dim": ("Head dimensions, e.g. 64,128.", "Head dimension [default: 128]."),
    "batch": ("Batch sizes.", "Batch [default: 4]."),
    "dtype": ("fp16, bf16 or fp32 (comma-separated).", "fp16, bf16 or fp32 [default: bf16]."),
    "causal": ("Only causal, or only full attention.", "Causal mask [default: no]."),
    "mode": ("fwd, bwd (backward alone) or fwd_bwd.", "fwd, bwd or fwd_bwd [default: fwd]."),
    "window": ("Sliding windows in keys left of the causal diagonal, e.g. none,4096 (needs "
               "causal).", "Sliding window [default: none]."),
    "softcap": ("Logit softcaps c (scores become c·tanh(s/c)), e.g. none,50.",
                "Logit softcap [default: none]."),
    "page_size": ("Paged KV cache page sizes, e.g. 16,256 (mode fwd).",
                  "Page size [default: none]."),
}


def shape_flag(name: str, *, single: bool = False) -> Any:
    """The option of a case flag: a comma-separated list for ``run``, or (``single``) one
    value for ``profile``."""
    flags = ("--causal/--no-causal",) if name == "causal" else ()
    return typer.Option(None, *flags, help=_SHAPE_FLAGS[name][1 if single else 0])


def int_list(flag: str, text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    values = []
    for part in text.split(","):
        try:
            values.append(int(part.strip()))
        except ValueError:
            raise UserError(f"{flag}: {part.strip()!r} is not an integer "
                            f"(give a comma-separated list such as 1024,2048)") from None
    return values


def optional_list(flag: str, text: Optional[str], kind: type) -> Optional[list[Any]]:
    """A comma-separated list of numbers where ``none`` means the feature off."""
    if text is None:
        return None
    values: list[Any] = []
    for part in (p.strip() for p in text.split(",")):
        if part.lower() in ("none", "null"):
            values.append(None)
            continue
        try:
            values.append(kind(part))
        except ValueError:
            raise UserError(f"{flag}: {part!r} is not {'an integer' if kind is int else 'a number'}"
                            f" or none (give a list such as none,4096)") from None
    return values


def str_list(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


def choice(flag: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UserError(f"{flag}: {value!r} is not one of {', '.join(allowed)}"
                        f"{did_you_mean(value, allowed)}")
    return value


def write_output(text: str, output: Optional[Path]) -> None:
    """To stdout, or to a file written whole (temporary file, then rename) or not at all."""
    if output is None:
        sys.stdout.write(text)
        return
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, output)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {output}: {e.strerror}") from None
    typer.echo(f"wrote {output}", err=True)
