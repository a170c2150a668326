"""Download a model into the models folder, with a progress bar: an entry of the model catalogue, or any
Hugging Face hub repo typed in."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, ProgressBar, Select, Static

from haruhi_tui.app.screens.download_progress import DownloadProgress
from haruhi_tui.app.services import Report
from haruhi_tui.core.memory_fit import gib
from haruhi_tui.services.hub import download
from haruhi_tui.services.model_catalogue import CATALOGUE, CatalogueEntry, find_entry


class DownloadDialog(DownloadProgress, ModalScreen[str | None]):
    """A catalogue entry (it fills in repo and file) or a repo id and optional file; Enter starts
    :func:`haruhi_tui.services.hub.download` in a thread.

    Dismisses with the downloaded path; a failure (offline, no such repo, full disk) stays on the
    dialog as its one-line message so the user can fix the name and press Enter again.
    """

    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, report: Report, dest: Path | None = None) -> None:
        super().__init__()
        self.report = report
        self.dest = dest
        self.running = False
        self.error = ""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Download model", classes="dialog-title")
            yield Select([(self._entry_line(e), e.id) for e in CATALOGUE], id="catalogue",
                         prompt="pick from the catalogue, or type a repo id below")
            yield Input(placeholder="repo id, e.g. unsloth/gpt-oss-20b-GGUF", id="repo")
            yield Input(placeholder="file (optional: the only or the Q4_K_M GGUF is picked)", id="file")
            yield ProgressBar(total=1.0, show_eta=False, id="download-progress")
            yield Static("Enter starts; an interrupted download resumes when started again.", id="download-status",
                         classes="note")

    def on_mount(self) -> None:
        self.query_one("#repo", Input).focus()

    @staticmethod
    def _entry_line(entry: CatalogueEntry) -> str:
        fit = entry.fit()
        return f"{entry.id} · {entry.size_label} · " + ("fits" if fit.fits else "too big for this machine")

    @on(Select.Changed, "#catalogue")
    def _picked(self, event: Select.Changed) -> None:
        entry = find_entry(str(event.value))  # None for the blank choice
        if entry is None:
            return
        self.query_one("#repo", Input).value = entry.repo
        self.query_one("#file", Input).value = entry.file
        fit = entry.fit()
        self._status(f"{entry.label}: {entry.note}. Enter downloads it." if fit.fits
                     else f"{entry.label} needs about {gib(fit.need)}, more than this machine has; "
                          "Enter downloads it anyway.", error=not fit.fits)
        self.query_one("#repo", Input).focus()

    @on(Input.Submitted)
    def _start(self) -> None:
        repo = self.query_one("#repo", Input).value.strip()
        filename = self.query_one("#file", Input).value.strip() or None
        if self.running:
            return
        if "/" not in repo:
            self._status("type a repo id like owner/name", error=True)
            self.query_one("#repo", Input).focus()
            return
        self.running, self.error = True, ""
        self.progress_bar.update(total=None, progress=0)
        self._status(f"asking the hub about {repo}…")
        # on the app, not this screen: Esc closes the dialog and the download goes on, reported when done
        self.app.run_worker(partial(self.fetch, repo, filename), thread=True, group="download", exclusive=True)

    def fetch(self, repo: str, filename: str | None) -> None:
        path = self._fetch(repo, lambda progress: download(repo, filename, self.dest, progress=progress))
        if path is not None:
            self.app.call_from_thread(self._done, path)

    def _failed(self, message: str) -> None:
        self.running, self.error = False, message
        self.report(message)
        self._show_failure(message)

    def _done(self, path: Path) -> None:
        self.running = False
        if self.is_attached and self.app.screen is self:
            self.dismiss(str(path))
        else:
            self.app.notify(f"downloaded {path}: ctrl+o picks it", timeout=15)
