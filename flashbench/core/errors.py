"""The one exception type that means 'the user asked for something wrong' (exit code 2)."""

from __future__ import annotations

import difflib
import reprlib
from typing import Any, Iterable

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "UserError",
           "did_you_mean", "one_line", "quoted"]

# Exit codes, as the README documents them.
EXIT_OK = 0
EXIT_FAILED = 1  # a failed case under --strict, a regression under check, a sweep that could not go on
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class UserError(Exception):
    """Bad input: the CLI prints the message on one line and exits with code 2."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def one_line(exc: BaseException, limit: int = 500) -> str:
    """An exception as one line, its type first: ``RuntimeError: CUDA error: ...``."""
    text = " ".join(str(exc).split())
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:limit]


# Bounded at every level, so that quoting a huge value costs little, not just prints little.
_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHORT.maxlevel = 3
_SHORT.maxtuple = _SHORT.maxlist = _SHORT.maxdict = _SHORT.maxset = 8
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 400


def quoted(value: Any, limit: int = 120) -> str:
    """A value from the input as a message quotes it: its repr, on one line, at most ``limit``
    characters (a value read from a file can be any size)."""
    text = " ".join(_SHORT.repr(value).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
