"""Progress lines on stderr, prefixed so they read apart from a command's output on stdout."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    """One progress line on stderr, prefixed `clipx:` (stdout stays for results and JSON)."""
    print(f"clipx: {message}", file=sys.stderr, flush=True)
