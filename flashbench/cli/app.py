"""The Typer application: bad input as one line and exit 2, usage without a command, --version."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer
from typer.core import TyperGroup

from flashbench.core.errors import EXIT_BAD_INPUT, EXIT_FAILED, UserError

__all__ = ["app", "command"]

# Usage errors derive from click's ClickException, which recent Typer vendors and older Typer
# imports: find it through a class Typer exports either way.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _one_line(message: str) -> str:
    """Bad input is one line even when what it quotes is not (a file name with a newline)."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class _OneLineErrors(TyperGroup):
    """A flag of the wrong type or an unknown option is bad input too: one line, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not (sys.argv[1:] if args is None else args):  # `flashbench` alone: its usage, exit 0
            args = ["--help"]
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("aborted", err=True)
            code = EXIT_FAILED
        except _ClickException as e:
            where = f"{e.ctx.command_path}: " if getattr(e, "ctx", None) else ""
            typer.echo(f"error: {where}{_one_line(e.format_message())}", err=True)
            code = e.exit_code
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Benchmark and profile attention: Triton FlashAttention, PyTorch SDPA backends, naive.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help text is plain text: as Rich markup, every "[default: …]" note would vanish.
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from flashbench import __version__

        typer.echo(f"flashbench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print flashbench's version and exit."),
) -> None:
    """Benchmark and profile attention: Triton FlashAttention, PyTorch SDPA backends, naive."""


def command(name: str | None = None, *, short_help: str) -> Callable[[Callable], Callable]:
    """Register a command whose bad input (UserError) prints one line on stderr and exits 2."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                typer.echo(f"error: {_one_line(str(e))}", err=True)
                raise typer.Exit(EXIT_BAD_INPUT) from None

        return app.command(name, short_help=short_help)(wrapper)

    return register
