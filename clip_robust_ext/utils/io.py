"""Atomic writes: a crash never leaves a half-written result, recipe or checkpoint."""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ClipxError


def atomic_write(path: str | os.PathLike, writer: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write through `writer(fileobj)` into a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:
            raise named(exc, path) from exc
        raise
    return path


def write_stdout(text: str, what: str) -> None:
    """The one document a command prints (--json); a closed or failing stdout is an error (exit
    1), not an exit 0 that printed nothing: a script would take the silence as success."""
    if sys.stdout is None:
        raise ClipxError(f"{what}: stdout is closed; nothing was written (redirect it: > out.json)")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError) as exc:  # EPIPE, EBADF, ENOSPC; ValueError: a closed file object
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ClipxError(f"{what}: cannot write the document to stdout ({reason})") from None


def named(exc: OSError, path: str | os.PathLike) -> OSError:
    """The same error naming the file: a failed write() (ENOSPC, EFBIG, EIO) names none, and
    'No space left on device' alone does not say which disk."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def append_text(path: str | os.PathLike, text: str, sync: bool = False) -> None:
    """Append to a log file (metrics.jsonl, eval_log.jsonl); a failed write names the file."""
    try:
        with open(path, "a") as fh:
            fh.write(text)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise named(exc, path) from exc


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` via a temporary file and a rename: readers see the old or the new file."""
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON via a temporary file and a rename."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    try:
        return atomic_write(path, lambda fh: torch.save(obj, fh))
    except RuntimeError as exc:  # torch's zip writer reports a failed write (disk full) this way
        reason = " ".join(str(exc).split())[:120]
        raise OSError(
            errno.EIO, f"torch.save could not write ({reason}); disk full?", str(path)
        ) from exc


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object file, or {} when missing, unreadable or not an object (a marker cut by a
    crash reads as empty, never as an exception)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}
