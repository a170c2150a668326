"""Launcher jobs in the sessions database (schema version 4): the history list and the output-folder lock."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .sessions import Store

JOB_KINDS = ("train", "convert", "eval")
JOB_STATUSES = ("running", "completed", "cancelled", "failed")
_JSON = ("command", "config", "metrics", "outputs")


@dataclass
class JobRow:
    id: int
    kind: str
    output: str
    title: str = ""
    command: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    log_path: str = ""
    cwd: str = ""
    pid: int | None = None
    status: str = "running"
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    ended_at: float | None = None


class JobTable:
    """Queries on the ``jobs`` table through a :class:`Store`'s connection (its lock and error messages)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, kind: str, output: str, *, title: str = "", command: list[str] | None = None,
            config: dict[str, Any] | None = None, log_path: str = "", cwd: str = "", pid: int | None = None) -> JobRow:
        cur = self.store._write([(
            "INSERT INTO jobs (kind, title, command, config, output, log_path, cwd, pid, status, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
            (kind, title, json.dumps(command or []), json.dumps(config or {}, ensure_ascii=False, default=str),
             output, log_path, cwd, pid, time.time()),
        )])[0]
        return self.get(cur.lastrowid)

    def update(self, job_id: int, **values: Any) -> None:
        if not values:
            return
        sets, params = [], []
        for key, value in values.items():
            sets.append(f"{key} = ?")
            params.append(json.dumps(value, ensure_ascii=False, default=str) if key in _JSON else value)
        self.store._write([(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*params, job_id))])

    def get(self, job_id: int) -> JobRow:
        row = self.store._run(f"SELECT {self._cols()} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return self._row(row)

    def list(self, limit: int = 200, status: str | None = None) -> list[JobRow]:
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self.store._run(f"SELECT {self._cols()} FROM jobs {where} ORDER BY id DESC LIMIT ?",
                               (*params, limit)).fetchall()
        return [self._row(r) for r in rows]

    def running_at(self, output: str) -> list[JobRow]:
        rows = self.store._run(f"SELECT {self._cols()} FROM jobs WHERE output = ? AND status = 'running'",
                               (output,)).fetchall()
        return [self._row(r) for r in rows]

    def delete(self, job_id: int) -> None:
        self.store._write([("DELETE FROM jobs WHERE id = ?", (job_id,))])

    def _cols(self) -> str:
        return ", ".join(self.store._columns("jobs"))

    def _row(self, row: tuple) -> JobRow:
        values = dict(zip(self.store._columns("jobs"), row))
        for key in _JSON:
            values[key] = json.loads(values[key] or ("[]" if key == "command" else "{}"))
        return JobRow(**values)
