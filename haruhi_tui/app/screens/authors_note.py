"""The chat's author's note (SillyTavern's): text placed a few messages from the end of every prompt, so it
steers the next replies without moving the stable start of the prompt. Stored with the chat; F2 shows it as
its own block."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static, TextArea

from haruhi_tui.core.roleplay import MAX_NOTE_DEPTH, AuthorsNote, check_depth


class AuthorsNoteDialog(ModalScreen[AuthorsNote | None]):
    """Edit the note's text and depth; ctrl+s saves (an empty text removes the note), Esc cancels."""

    DEFAULT_CSS = """
    #note-text { height: 6; }
    #note-depth-row { height: auto; }
    #note-depth-row Label { padding: 1 0 0 0; }
    #note-depth { width: 12; }
    """

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, note: AuthorsNote, character: str) -> None:
        super().__init__()
        self.note = note
        self.character = character

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="authors-note"):
            yield Label("Author's note for this chat", classes="dialog-title")
            yield TextArea(self.note.text, soft_wrap=True, show_line_numbers=False, id="note-text")
            with Horizontal(id="note-depth-row"):
                yield Label("Depth ")
                yield Input(str(self.note.depth), type="integer", max_length=4, id="note-depth")
            yield Static(f"Goes into every prompt this many messages from the end (0: after your last line; "
                         f"up to {MAX_NOTE_DEPTH}, default 4). {{{{user}}}} and {{{{char}}}} ({self.character}) "
                         "resolve. ctrl+s saves; an empty note is none.", classes="note")
            yield Static("", id="note-problem", classes="problem")

    def on_mount(self) -> None:
        self.query_one("#note-text", TextArea).focus()

    @on(Input.Submitted, "#note-depth")
    def _submitted(self) -> None:
        self.action_save()

    def action_save(self) -> None:
        raw = self.query_one("#note-depth", Input).value.strip()
        try:
            depth = check_depth(int(raw)) if raw.lstrip("-").isdigit() else check_depth(raw or None)
        except ValueError:
            self.query_one("#note-problem", Static).update(f"the depth is a whole number from 0 to {MAX_NOTE_DEPTH}")
            self.query_one("#note-depth", Input).focus()
            return
        self.dismiss(AuthorsNote(self.query_one("#note-text", TextArea).text.strip(), depth))
