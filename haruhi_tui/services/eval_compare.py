"""The side-by-side comparison of an evaluation group, made by the command line.

Once every run of a group has its ``metrics.json``, ``haruhi eval compare RUN… --name … --out ROOT`` runs in
the background (a second or so) and writes ``comparison.json`` and ``comparison.md`` into the group's root
folder; the launcher hands the JSON to the app, which draws the table from it. The app never imports the
trainer's comparison code: the command and its files are the interface.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import read_json

METRICS_FILE = "metrics.json"  # what `haruhi eval` writes into each run folder
COMPARISON_FILE = "comparison.json"  # what `haruhi eval compare --out ROOT` writes into ROOT


def compare_argv(runs: Sequence[str], names: Sequence[str], out: str) -> list[str]:
    argv = ["haruhi", "eval", "compare", *runs]
    for name in names:
        argv += ["--name", name]
    return [*argv, "--out", out]


class Comparisons:
    """One ``haruhi eval compare`` per eval group, polled (never waited on), so the UI never blocks on it.

    ``runnable`` turns ``haruhi …`` into the argv that starts it from this Python.
    """

    def __init__(self, runnable: Callable[[list[str]], list[str]], cwd: str | os.PathLike) -> None:
        self.runnable = runnable
        self.cwd = Path(cwd)
        self._runs: dict[tuple, subprocess.Popen] = {}
        self._errors: dict[tuple, str] = {}  # per finished run: its error, "" for success

    def result(self, group: dict[str, Any]) -> dict[str, Any] | None:
        """The group's comparison (the JSON ``haruhi eval compare`` wrote), or None while a run lacks metrics or
        the command is still running. A failed command is a :class:`HaruhiError` with its message."""
        outputs = [str(o) for o in group.get("outputs") or []]
        metrics = [Path(o) / METRICS_FILE for o in outputs]
        if not outputs or not all(m.is_file() for m in metrics):
            return None
        root = Path(group.get("root") or Path(outputs[0]).parent)
        key = (str(root), *((str(m), m.stat().st_mtime_ns) for m in metrics))  # a re-run evaluation compares again
        proc = self._runs.get(key)
        if proc is None:
            argv = self.runnable(compare_argv(outputs, group.get("names") or [], str(root)))
            try:
                self._runs[key] = subprocess.Popen(argv, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except OSError as exc:
                raise HaruhiError(f"cannot run haruhi eval compare: {exc}") from None
            return None
        if proc.poll() is None:
            return None
        if key not in self._errors:  # read its message once, closing the pipe
            lines = proc.communicate()[1].decode("utf-8", "replace").strip().splitlines()
            self._errors[key] = "" if proc.returncode == 0 else (lines[-1] if lines else f"exit code {proc.returncode}")
        if self._errors[key]:
            raise HaruhiError(f"haruhi eval compare failed: {self._errors[key]}")
        return read_json(root / COMPARISON_FILE, "comparison")
