"""``events.jsonl``: the one progress format every long job writes and the TUI launcher reads.

A job (train, eval, convert) appends one JSON object per line to ``<output>/events.jsonl``; every
event has ``event`` (its kind), ``time`` (Unix seconds) and ``job``. The kinds and their fields:

==============  ===============================================================================
``start``       ``config`` (the resolved configuration), ``total`` (steps or samples), ``unit``
                (``step``/``sample``/``tensor``), ``pid`` (the process to signal to cancel the job),
                ``resumed_from`` (step, or null; a resumed run appends to the same file and redoes the
                steps after that checkpoint, so readers drop the curve's points after it)
``step``        training: ``step``, ``total``, ``epoch``, ``loss``, ``learning_rate``, ``grad_norm``,
                ``tokens_per_second``, ``real_token_share``, ``elapsed``, ``eta``, ``gpu_memory_gb``
``progress``    eval/convert: ``done``, ``total``, ``rate`` (per second), ``unit``, ``elapsed``, ``eta``
``checkpoint``  ``step``, ``path``
``log``         ``level``, ``message`` (train adds one with ``message`` "details" and ``engine``,
                ``data`` and ``plan``: the engine, dataset and batch-plan figures)
``error``       ``message`` (one line, what is wrong and what to do), ``kind``
``end``         ``status`` (``completed``/``cancelled``/``failed``), ``metrics`` (final numbers),
                ``outputs`` (paths written)
==============  ===============================================================================

Only rank 0 of a distributed run writes (another rank only an ``error`` naming its rank, and the
launcher an ``end`` when the workers died without one). Readers tolerate a torn last line (a job killed
mid-write).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

EVENTS_FILE = "events.jsonl"
EventKind = Literal["start", "step", "progress", "checkpoint", "log", "error", "end"]
Status = Literal["completed", "cancelled", "failed"]
KINDS: tuple[str, ...] = ("start", "step", "progress", "checkpoint", "log", "error", "end")


class EventLog:
    """Appends events for one job. Each line is flushed at once so a watcher sees it immediately."""

    def __init__(self, output_dir: str | os.PathLike, job: str, *, enabled: bool = True) -> None:
        self.path = Path(output_dir) / EVENTS_FILE
        self.job = job
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: EventKind, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "time": round(time.time(), 3), "job": self.job, **fields}
        if self.enabled:
            line = json.dumps(record, ensure_ascii=False, default=str)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
        return record

    def start(self, config: dict[str, Any], total: int | None, unit: str, resumed_from: int | None = None) -> None:
        self.emit("start", config=config, total=total, unit=unit, pid=os.getpid(), resumed_from=resumed_from)

    def error(self, message: str, kind: str = "error") -> None:
        self.emit("error", message=message, kind=kind)

    def end(self, status: Status, metrics: dict[str, Any] | None = None, outputs: dict[str, str] | None = None) -> None:
        self.emit("end", status=status, metrics=metrics or {}, outputs=outputs or {})


_INT, _NUMBER, _TEXT, _OBJECT = (int,), (int, float), (str,), (dict,)
#: The fields a reader relies on, by kind: (name, allowed types, required). Other fields are free.
_FIELDS: dict[str, tuple[tuple[str, tuple[type, ...], bool], ...]] = {
    "start": (("config", _OBJECT, False), ("total", _INT, False), ("pid", _INT, False),
              ("resumed_from", _INT, False), ("unit", _TEXT, False)),
    "step": (("step", _INT, True), ("total", _INT, False), ("loss", _NUMBER, False),
             ("learning_rate", _NUMBER, False)),
    "progress": (("done", _INT, True), ("total", _INT, False)),
    "checkpoint": (("path", _TEXT, True), ("step", _INT, False)),
    "log": (("message", _TEXT, False), ("level", _TEXT, False)),
    "error": (("message", _TEXT, False),),
    "end": (("status", _TEXT, False), ("metrics", _OBJECT, False), ("outputs", _OBJECT, False)),
}


def well_formed(record: Any) -> bool:
    """A record every reader can use: a known kind, and its fields of the types the table above gives (None
    allowed where a field is optional). A line another program wrote, or one damaged on disk, is skipped."""
    if not isinstance(record, dict) or record.get("event") not in KINDS:
        return False
    for name, types, required in _FIELDS[record["event"]]:
        value = record.get(name)
        if value is None:
            if required:
                return False
        elif not isinstance(value, types) or isinstance(value, bool):
            return False
    return True


def read_events(path: str | os.PathLike, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events from byte ``offset`` on, and the offset to continue from (a torn last line waits). Lines that
    are not well-formed events are skipped; a file that cannot be read gives nothing new."""
    p = Path(path)
    try:
        if p.is_dir():
            p = p / EVENTS_FILE
        if not p.exists():
            return [], offset
        with p.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    events: list[dict[str, Any]] = []
    consumed = 0
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            break
        consumed += len(raw)
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, absurdly nested
            continue
        if well_formed(record):
            events.append(record)
    return events, offset + consumed


@dataclass
class JobState:
    """What a watcher knows about a job after reading its events (the launcher's model of a job)."""

    job: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    total: int | None = None
    done: int = 0
    unit: str = "step"
    status: str = "running"  # running / completed / cancelled / failed
    last: dict[str, Any] = field(default_factory=dict)
    losses: list[tuple[int, float]] = field(default_factory=list)
    learning_rates: list[tuple[int, float]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def apply(self, record: dict[str, Any]) -> None:
        kind = record["event"]
        self.job = record.get("job", self.job)
        if kind == "start":
            self.config, self.pid = record.get("config", {}), record.get("pid")
            self.total, self.unit, self.status = record.get("total"), record.get("unit", "step"), "running"
            resumed = record.get("resumed_from")
            if resumed is not None:  # steps after the checkpoint are trained again: keep one curve
                self.losses = [(s, v) for s, v in self.losses if s <= resumed]
                self.learning_rates = [(s, v) for s, v in self.learning_rates if s <= resumed]
                self.done = resumed
        elif kind == "step":
            self.done, self.total, self.last = record["step"], record.get("total", self.total), record
            if record.get("loss") is not None:
                self.losses.append((record["step"], float(record["loss"])))
            if record.get("learning_rate") is not None:
                self.learning_rates.append((record["step"], float(record["learning_rate"])))
        elif kind == "progress":
            self.done, self.total, self.last = record["done"], record.get("total", self.total), record
        elif kind == "checkpoint":
            self.checkpoints.append(record["path"])
        elif kind == "log":
            self.logs.append(record.get("message", ""))
        elif kind == "error":
            self.errors.append(record.get("message", ""))
        elif kind == "end":
            self.status = record.get("status", "completed")
            self.metrics, self.outputs = record.get("metrics", {}), record.get("outputs", {})


def iter_job_state(path: str | os.PathLike) -> Iterator[JobState]:
    """Replay a whole events file into a :class:`JobState` (yields once, at the end)."""
    state = JobState()
    events, _ = read_events(path)
    for record in events:
        state.apply(record)
    yield state


def job_state(path: str | os.PathLike) -> JobState:
    return next(iter_job_state(path))
