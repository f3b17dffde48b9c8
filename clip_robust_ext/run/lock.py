"""The run-directory lock: one clipx process per run dir; a dead owner's lock is taken over
only on --resume. Its owner is identified by pid and process start time (/proc), so a reused pid
is not mistaken for the owner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ClipxError, ClipxUsageError
from ..params.values import check_path_room
from ..utils.io import named
from ..utils.log import log
from ..utils.procs import parse_owner, started_after_lock
from .layout import LOCK_NAME


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (state first), or None (no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process start time in clock ticks since boot: with the pid, a process's identity
    (a pid is reused; a pid and start time are not)."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _pid_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    if fields is None:
        return True
    if fields[0] == "Z":  # a killed child not yet reaped is a zombie: not running
        return False
    # the lock's pid now names another process: the owner is gone, its pid was reused
    return start is None or len(fields) <= 19 or fields[19] == str(start)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so a run stops the same clean way (lock released, finished
    work kept, resumable)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


class RunLock:
    """run_dir/run.lock: refuses a second run on the same dir, unless resuming a dead one."""

    def __init__(self, run_dir: Path, resume: bool, what: str = "run"):
        self.path = Path(run_dir) / LOCK_NAME
        self.resume, self.what = resume, what
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        self._previous_handler = None
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
        self.release()
        if exc_type is not None and issubclass(exc_type, Terminated):
            log(
                f"stopped by SIGTERM; finished work in {self.path.parent} is kept; run the same "
                "command again to continue"
            )

    def _mine(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "pid_start": _start_time(os.getpid()),
            "host": socket.gethostname(),
            "started": time.time(),
        }

    def acquire(self) -> None:
        folder = self.path.parent
        check_path_room(folder, "run dir")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClipxError(f"cannot create run dir {folder}: {exc.strerror or exc}") from None
        for _ in range(3):  # a stale lock another process just removed: create again
            if self._create():
                return
            if self._take_over():
                return
        raise ClipxUsageError(f"{folder}: another clipx process is taking this run dir; try again")

    def _create(self) -> bool:
        """Exclusive create: of two processes only one makes the file."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            folder = self.path.parent
            raise ClipxError(f"run dir {folder} is not writable: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self._mine(), fh)
        except OSError as exc:  # a full disk: the file exists but is empty; remove it
            self.path.unlink(missing_ok=True)
            raise named(exc, self.path) from None
        self.held = True
        return True

    def _read_owner(self, path: Path) -> dict[str, Any] | None:
        try:
            owner = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _remove_stale(self, owner: dict[str, Any]) -> bool:
        """Move the stale lock aside (atomic rename) and check it is the one inspected; a lock a
        racing resume created meanwhile is put back. True if this process removed it."""
        grave = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}.{time.time_ns()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return False
        if self._read_owner(grave) != owner:
            try:
                os.link(grave, self.path)
            except OSError:
                pass
            grave.unlink(missing_ok=True)
            return False
        grave.unlink(missing_ok=True)
        return True

    def _take_over(self) -> bool:
        raw = self._read_owner(self.path)
        if raw is None:
            return False  # released meanwhile: create it
        owner = parse_owner(raw)  # any field absurd or missing reads as unknown (pid -1)
        pid, host, here = owner.pid, owner.host, owner.here
        if pid == os.getpid() and here and owner.pid_start == _start_time(pid):
            raise ClipxUsageError(f"{self.path.parent} is already in use by this process")
        started = "an unknown time"
        if owner.started is not None:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.started))
        alive = here and pid > 0 and _pid_alive(pid, owner.pid_start)
        if alive and owner.pid_start is None:  # an old-format lock: a pid reused since?
            alive = not started_after_lock(owner, _start_time(pid))
        if alive or (not here and not self.resume):
            where = "" if here else f" on {host}"
            raise ClipxUsageError(
                f"{self.path.parent} is in use by clipx process {pid}{where} (since {started}); "
                f"wait for it, or choose another --run-dir"
            )
        if not self.resume:
            raise ClipxUsageError(
                f"{self.path.parent}: an earlier {self.what} (pid {pid}, started {started}) did not "
                "finish; pass --resume to continue it, or choose another --run-dir"
            )
        if not self._remove_stale(raw) or not self._create():
            return False  # another resume took it first: look again
        log(f"resuming the interrupted {self.what} in {self.path.parent}")
        return True

    def release(self) -> None:
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False


def check_writable(run_dir: Path) -> None:

    probe = run_dir / ".write-test"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ClipxError(f"run dir {run_dir} is not writable: {exc.strerror or exc}") from None
    free = shutil.disk_usage(run_dir).free
    if free < 50 * 2**20:
        raise ClipxError(f"run dir {run_dir}: only {free // 2**20} MiB free; need at least 50 MiB")
