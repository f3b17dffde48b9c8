"""Error types. The CLI maps ClipxUsageError to exit code 2 and ClipxError to exit code 1,
with a one-line message and no traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ClipxError(Exception):
    """A runtime failure with a message meant for the user (exit code 1)."""


class ClipxUsageError(ClipxError):
    """Bad input from the user: recipe, option, file, name (exit code 2)."""


class AdversarialCheckError(ClipxError):
    """An attack returned examples outside the threat model (eps ball, [0, 1], finite)."""


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or '' - used in every unknown-name message."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> ClipxUsageError:
    """The usage error for an unknown component name: the closest match and what is available."""
    choices = sorted(choices)
    hint = closest(name, choices)
    listing = ", ".join(choices[:12]) + (" ..." if len(choices) > 12 else "")
    # a name with a newline or control character is shown escaped: the message stays one line
    shown = name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
    return ClipxUsageError(f"unknown {kind} '{shown}'{hint}; available: {listing}")
