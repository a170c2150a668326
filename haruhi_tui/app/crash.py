"""What the app does with an error nobody expected: the traceback goes to a log file in the data folder, the
person sees one line naming that file.

A failed background task (a Textual worker) is reported in the app, which keeps running; any other unexpected
error ends the app with a non-zero exit code and the same one line on the terminal (:mod:`.main`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import traceback
from pathlib import Path

from haruhi_tui.core.paths import data_dir

LOG_FILE = "haruhi-tui.log"
#: The log is started afresh (the old one kept as ``.1``) once it grows past this.
MAX_LOG_BYTES = 1_000_000


def log_path() -> Path:
    return data_dir() / "logs" / LOG_FILE


def summary(error: BaseException) -> str:
    """``ValueError: what it said`` (its first line, shortened)."""
    text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def record(error: BaseException, what: str) -> Path | None:
    """Append ``what`` and the error's traceback to the log; its path, or None when it cannot be written."""
    path = log_path()
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if path.stat().st_size > MAX_LOG_BYTES:
                os.replace(path, path.with_name(LOG_FILE + ".1"))
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"--- {stamp} pid {os.getpid()}: {what}\n{text}\n")
    except OSError:
        return None
    return path


def where(path: Path | None) -> str:
    if path is None:
        return "the traceback could not be saved (the data folder is not writable)"
    return f"the traceback is in {path}"
