"""Small dialogs: a line of text to type or edit (a chat's title, your name, a message, a pinned fact), and a
yes/no question before something is deleted."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class TextDialog(ModalScreen[str | None]):
    """One line of text: Enter keeps it (dismisses with the text, None if empty), Esc cancels."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, heading: str, value: str = "", *, note: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.heading, self.value, self.note, self.placeholder = heading, value, note, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.heading, classes="dialog-title")
            yield Input(self.value, placeholder=self.placeholder, select_on_focus=False, id="dialog-text")
            yield Static(" · ".join(x for x in (self.note, "Enter keeps it, Esc cancels") if x), classes="note")

    def on_mount(self) -> None:
        self.query_one("#dialog-text", Input).focus()

    @on(Input.Submitted, "#dialog-text")
    def _done(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class ConfirmDialog(ModalScreen[bool]):
    """A question before something is deleted. Cancel has the focus, so Enter (or a sentence typed by
    mistake) never deletes; y or the Delete button does."""

    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel"), Binding("y", "dismiss(True)", "Yes")]

    def __init__(self, question: str, action: str = "Delete") -> None:
        super().__init__()
        self.question, self.action = question, action

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title")
            with Horizontal(classes="buttons"):
                yield Button(self.action, variant="error", id="yes")
                yield Button("Cancel", id="no")
            yield Static(f"y: {self.action.lower()} · Esc or Enter: cancel", classes="note")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _answer(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")
