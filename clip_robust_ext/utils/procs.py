"""Who holds a run lock: the lock file read defensively, and whether its process still exists.

A lock file is data another process (or a crash, or a person) wrote: any field may be missing,
of the wrong type or absurd (pid 1e30). Each field is checked and an unusable one reads as
unknown, never as an exception. A pid is reused after its process ends, so a live pid is the
owner only if that process started before the lock was written: locks carry the pid's start
time (`pid_start`, clock ticks since boot); older locks carry only `started` (wall time), which
is compared with the process's start in wall time."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from typing import Any

PID_MAX = 2**22  # Linux's largest pid_max; macOS and the BSDs stay below it
CLOCK_SLACK_S = 2.0  # start times from /proc are in clock ticks: allow rounding and clock steps


@dataclass(frozen=True)
class LockOwner:
    pid: int  # -1: unknown (missing, not an integer, out of range)
    host: str
    started: float | None  # wall time the lock was written
    pid_start: str | None  # the pid's start time in clock ticks since boot

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()


def parse_owner(owner: dict[str, Any]) -> LockOwner:
    """The fields of a lock file's JSON object; a lock cut by a crash names no host, so it was
    written on this one."""
    pid = owner.get("pid")
    if isinstance(pid, float) and math.isfinite(pid) and pid.is_integer():
        pid = int(pid)
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < PID_MAX:
        pid = -1
    host = owner.get("host")
    started = owner.get("started")
    if isinstance(started, bool) or not isinstance(started, (int, float)):
        started = None
    elif not math.isfinite(started) or not 0 < started < 2**40:
        started = None  # 0 is the old lock reader's "not recorded", not 1970
    pid_start = owner.get("pid_start")
    return LockOwner(
        pid=pid,
        host=host if isinstance(host, str) and host else socket.gethostname(),
        started=None if started is None else float(started),
        pid_start=pid_start if isinstance(pid_start, str) and pid_start.isdigit() else None,
    )


def process_start_wall_time(start_ticks: str | None) -> float | None:
    """A process's start (its /proc stat field 22, clock ticks since boot) as wall time."""
    if start_ticks is None:
        return None
    try:
        with open("/proc/stat") as fh:
            boot = next(float(x.split()[1]) for x in fh if x.startswith("btime "))
        return boot + int(start_ticks) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def started_after_lock(owner: LockOwner, process_start_ticks: str | None) -> bool:
    """Whether the live process now holding the lock's pid started after the lock was written:
    then it cannot have written it (the owner ended and its pid was reused)."""
    if owner.started is None:
        return False
    began = process_start_wall_time(process_start_ticks)
    return began is not None and began > owner.started + CLOCK_SLACK_S
