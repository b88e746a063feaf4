"""The one exception type that means 'the user asked for something wrong' (exit code 2)."""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["UserError", "did_you_mean"]


class UserError(Exception):
    """Bad input: the CLI prints the message on one line and exits with code 2."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
