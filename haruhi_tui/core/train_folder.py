"""What in a training output folder belongs to a run that a new one must not be mixed with.

Checkpoints, an adapter and the events of a run that trained (or is still going) do. A run that stopped
before its first step (a typo in ``--dataset``, a model that would not load, Ctrl-C or kill -9 while loading)
leaves only ``events.jsonl`` and ``train_config.toml``: a new run may start there (it appends to the first
and replaces the second), so the corrected command is not refused. The trainer (``haruhi train``) and the
launcher (the app's jobs screen) decide with the same function.
"""

from __future__ import annotations

from pathlib import Path

from .events import EVENTS_FILE, read_events
from .processes import pid_alive

CHECKPOINT_PREFIX = "checkpoint-"
ADAPTER_DIR = "adapter"


def run_traces(out: Path) -> list[str]:
    """Names in ``out`` that belong to a run a fresh start would mix with (sorted; empty when none)."""
    if not out.is_dir():
        return []
    traces = [p.name for p in out.glob(CHECKPOINT_PREFIX + "*")]
    if (out / ADAPTER_DIR).exists():
        traces.append(ADAPTER_DIR)
    events = out / EVENTS_FILE
    if (events.exists() or events.is_symlink()) and not never_trained(events):
        traces.append(EVENTS_FILE)
    return sorted(traces)


def never_trained(events: Path) -> bool:
    """``events`` tells of runs that all stopped before their first step, none still going. An empty or
    unreadable file tells nothing, so it is not taken for one."""
    try:
        records, _ = read_events(events)
    except OSError:
        return False
    if not records or any(r["event"] in ("step", "checkpoint") for r in records):
        return False
    if records[-1]["event"] == "end":
        return True
    starts = [r for r in records if r["event"] == "start"]
    pid = starts[-1].get("pid") if starts else None
    return isinstance(pid, int) and not pid_alive(pid)  # killed before its first step
