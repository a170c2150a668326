"""What in a training output folder blocks a fresh start: a run that trained, or is still going, does; one that
stopped before its first step does not (its corrected command must run)."""

from __future__ import annotations

import os
import subprocess
import sys

from haruhi_tui.core.events import EventLog
from haruhi_tui.core.train_folder import run_traces


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_run_that_never_reached_a_step_leaves_nothing_that_blocks(tmp_path):
    failed = EventLog(tmp_path / "typo", "train")  # the dataset was not found: error and end, no start
    failed.error("dataset not found: data/trian.json", kind="input")
    failed.end("failed")
    assert run_traces(tmp_path / "typo") == []

    killed = EventLog(tmp_path / "killed", "train")  # kill -9 while the model loaded
    killed.emit("start", config={}, total=10, unit="step", pid=_dead_pid(), resumed_from=None)
    assert run_traces(tmp_path / "killed") == []


def test_a_run_that_trained_or_is_loading_now_blocks(tmp_path):
    trained = EventLog(tmp_path / "trained", "train")
    trained.emit("start", config={}, total=10, unit="step", pid=_dead_pid(), resumed_from=None)
    trained.emit("step", step=1, total=10, loss=2.0)
    trained.end("failed")
    assert run_traces(tmp_path / "trained") == ["events.jsonl"]

    loading = EventLog(tmp_path / "loading", "train")  # its process is alive: this test's
    loading.emit("start", config={}, total=10, unit="step", pid=os.getpid(), resumed_from=None)
    assert run_traces(tmp_path / "loading") == ["events.jsonl"]

    (tmp_path / "unknown").mkdir()  # an empty events file tells nothing: it is not taken for a failed start
    (tmp_path / "unknown" / "events.jsonl").write_text("", encoding="utf-8")
    assert run_traces(tmp_path / "unknown") == ["events.jsonl"]

    (tmp_path / "kept" / "checkpoint-3").mkdir(parents=True)
    (tmp_path / "kept" / "adapter").mkdir()
    assert run_traces(tmp_path / "kept") == ["adapter", "checkpoint-3"]
