"""Every key the app answers to, gathered from the bindings themselves so the list cannot go stale."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

EXTRA_KEYS = [
    ("enter", "Send the message"),
    ("up / down", "Walk through what you typed before (in the message box)"),
    ("ctrl+p", "Command palette: every action by name"),
    ("r / d", "Rename / delete the highlighted chat (in the sidebar)"),
    ("ctrl+q", "Quit (a reply in progress is stopped and saved)"),
]


def key_table(bindings: list[Binding]) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column()
    seen = set()
    for binding in bindings:
        if not binding.description or binding.key in seen:
            continue
        seen.add(binding.key)
        table.add_row(binding.key.replace(",", " / "), binding.tooltip or binding.description)
    for key, what in EXTRA_KEYS:
        table.add_row(key, what)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def __init__(self, bindings: list[Binding]) -> None:
        super().__init__()
        self.bindings = bindings

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help"):
            yield Label("Keys", classes="dialog-title")
            yield Static(key_table(self.bindings), id="keys")
            yield Static(
                "Replies stream in; Esc stops one. The character's thinking (gpt-oss) is kept apart and never "
                "sent back to the model. F2 shows exactly what was sent. Chats are saved as you go.",
                classes="note",
            )
