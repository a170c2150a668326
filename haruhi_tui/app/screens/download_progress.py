"""What the download dialogs share: the worker's fetch with its failures turned into messages, one progress
bar and one status line (a model from the hub, characters from the ChatHaruhi hub)."""

from __future__ import annotations

from typing import Callable, TypeVar

from textual.widgets import ProgressBar, Static

from haruhi_tui.core.errors import HaruhiError

T = TypeVar("T")
Progress = Callable[[float | None, str], None]


class DownloadProgress:
    """Mixed into a screen whose ``#<PROGRESS>`` bar and ``#<STATUS>`` line follow a download run in a worker
    thread; the screen defines ``_failed(message)``."""

    PROGRESS = "download-progress"
    STATUS = "download-status"

    @property
    def progress_bar(self) -> ProgressBar:
        return self.query_one(f"#{self.PROGRESS}", ProgressBar)  # type: ignore[attr-defined]

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one(f"#{self.STATUS}", Static)  # type: ignore[attr-defined]
        status.update(text)
        status.set_class(error, "problem")

    def _progress(self, fraction: float | None, message: str) -> None:
        if not self.is_attached:  # type: ignore[attr-defined]
            return
        if fraction is None:
            self.progress_bar.update(total=None)
        else:
            self.progress_bar.update(total=1.0, progress=fraction)
        self._status(message)

    def _show_failure(self, message: str) -> None:
        if self.is_attached:  # type: ignore[attr-defined]
            self.progress_bar.update(total=1.0, progress=0)
            self._status(message, error=True)

    def _fetch(self, what: str, fetch: Callable[[Progress], T]) -> T | None:
        """``fetch(progress)`` in the worker thread; a failure goes to ``_failed`` (None is returned): a
        download must never take the app down."""
        app = self.app  # type: ignore[attr-defined]

        def progress(fraction: float | None, message: str) -> None:
            app.call_from_thread(self._progress, fraction, message)

        try:
            return fetch(progress)
        except HaruhiError as exc:
            app.call_from_thread(self._failed, str(exc))  # type: ignore[attr-defined]
        except Exception as exc:
            app.call_from_thread(self._failed,  # type: ignore[attr-defined]
                                 f"download of {what} failed: {type(exc).__name__}: {exc}")
        return None
