"""Dialogs for files that leave or enter the app: character cards, chat exports."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from haruhi_tui.services.export import ST_SUFFIX

#: Chat export formats: suffix -> what the user sees. export.py picks the writer from the suffix.
CHAT_FORMATS = {
    ".md": "Markdown (.md): to read or share",
    ".jsonl": "JSONL (.jsonl): one message per line",
    ".json": "ShareGPT (.json): training data, like `haruhi data build` writes",
    ST_SUFFIX: f"SillyTavern ({ST_SUFFIX}): a chat SillyTavern opens, swipes included",
}


def format_suffix(path: Path) -> str:
    """The export format a path names: one of :data:`CHAT_FORMATS` (``.st.jsonl`` before ``.jsonl``), or ""."""
    name = path.name.lower()
    return next((suffix for suffix in sorted(CHAT_FORMATS, key=len, reverse=True) if name.endswith(suffix)), "")


def with_format(path: Path, suffix: str) -> Path:
    """``path`` with its format suffix (``.md``, ``.st.jsonl``…) replaced by ``suffix``."""
    old = format_suffix(path) or path.suffix
    stem = path.name[:len(path.name) - len(old)] if old else path.name
    return path.with_name(stem + suffix)


class PathDialog(ModalScreen[str | None]):
    """A path to type or edit; Enter accepts, Esc cancels."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, heading: str, value: str = "", placeholder: str = "", note: str = "") -> None:
        super().__init__()
        self.heading, self.value, self.placeholder, self.note = heading, value, placeholder, note

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.heading, classes="dialog-title")
            yield Input(self.value, placeholder=self.placeholder, id="path")
            if self.note:
                yield Static(self.note, classes="note")

    @on(Input.Submitted, "#path")
    def _done(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        self.dismiss(str(Path(value).expanduser()) if value else None)


class ExportChatDialog(ModalScreen[str | None]):
    """Pick a format (it sets the file's suffix) and edit the path; Enter in the path writes it."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, default_path: Path) -> None:
        super().__init__()
        self.default_path = default_path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Export chat", classes="dialog-title")
            yield OptionList(*[Option(text, id=suffix) for suffix, text in CHAT_FORMATS.items()], id="formats")
            yield Input(str(self.default_path), id="path")
            yield Static("Enter writes the file; the suffix picks the format.", classes="note")

    def on_mount(self) -> None:
        formats = self.query_one("#formats", OptionList)
        suffixes = list(CHAT_FORMATS)
        suffix = format_suffix(self.default_path)
        formats.highlighted = suffixes.index(suffix) if suffix in suffixes else 0
        formats.focus()

    @on(OptionList.OptionHighlighted, "#formats")
    @on(OptionList.OptionSelected, "#formats")
    def _format(self, event: OptionList.OptionHighlighted | OptionList.OptionSelected) -> None:
        box = self.query_one("#path", Input)
        current = Path(box.value.strip() or str(self.default_path))
        box.value = str(with_format(current, event.option.id or ".md"))
        if isinstance(event, OptionList.OptionSelected):
            box.focus()

    @on(Input.Submitted, "#path")
    def _done(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        self.dismiss(str(Path(value).expanduser()) if value else None)
