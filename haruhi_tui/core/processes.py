"""Is a process (a job we started, the owner of a temp file) still there, and is it still the same one?

A pid alone is not enough: once a process ends, the system may give its number to a new, unrelated one.
``/proc/<pid>/stat`` tells when a process started and ``/proc/<pid>/cmdline`` what it runs, so a recorded pid
can be checked against what was recorded when it started. Where /proc is missing, only liveness is known.
"""

from __future__ import annotations

import os
from pathlib import Path

#: How far the start time read from /proc may be from the one recorded at start (clock ticks, rounding).
START_TOLERANCE = 2.0


def pid_alive(pid: int | None) -> bool:
    """The process exists and has not exited (a zombie, exited but not yet reaped, counts as gone)."""
    if not pid or pid < 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, under another user
    except OverflowError:
        return False
    state = _stat_fields(pid)
    return state is None or state[0] != "Z"


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first); None without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def start_time(pid: int) -> float | None:
    """When the process started, in Unix seconds (to a clock tick); None when it cannot be told."""
    fields, boot = _stat_fields(pid), _boot_time()
    if not fields or len(fields) < 20 or boot is None:
        return None
    try:
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks since boot
    except (ValueError, OSError):
        return None


def command_line(pid: int) -> list[str] | None:
    """The process's argv; None when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0")[:-1]] if raw else []


def same_process(pid: int | None, started: float | None, argv_tail: list[str] | None = None) -> bool:
    """``pid`` is alive and is still the process that started at ``started`` (Unix seconds) running a command
    that ends with ``argv_tail``. A check /proc cannot answer counts as passed (liveness decides alone)."""
    if not pid_alive(pid):
        return False
    assert pid is not None
    if started is not None:
        actual = start_time(pid)
        if actual is not None and abs(actual - started) > START_TOLERANCE:
            return False
    if argv_tail:
        argv = command_line(pid)
        if argv is not None and argv[-len(argv_tail):] != list(argv_tail):
            return False
    return True
