"""Every key the app answers to and every command of the palette, gathered from the bindings and commands
themselves (so the list cannot go stale), grouped by where they work."""

from __future__ import annotations

from typing import Iterable

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

#: Keys that are not bindings of their own (the message box, the app, the palette).
CHAT_EXTRA = [
    ("enter", "Send the message"),
    ("enter (empty line)", "Group chat: the next character speaks on"),
    ("up / down", "Walk through what you typed before (in the message box)"),
    ("ctrl+p", "Command palette: every action by name (the list below)"),
    ("f6", "Jobs: train, convert, evaluate (the launcher)"),
    ("ctrl+q", "Quit (a reply in progress is stopped and saved)"),
]
PICKER_EXTRA = [("letters", "Filter by name or work"), ("enter", "Talk to the highlighted character")]


def bindings_of(screen: type) -> list[Binding]:
    """A screen's or widget's own bindings with those it inherits from our classes (not Textual's focus and
    copy keys), in the order the classes declare them."""
    out: list[Binding] = []
    for cls in reversed(screen.__mro__):
        if cls.__module__.startswith("haruhi_tui."):
            out += [b for b in cls.__dict__.get("BINDINGS", []) if isinstance(b, Binding)]
    return out


def key_table(bindings: Iterable[Binding], extra: Iterable[tuple[str, str]] = ()) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    seen = set()
    for binding in bindings:
        if not binding.description or binding.key in seen:
            continue
        seen.add(binding.key)
        table.add_row(binding.key.replace(",", " / "), binding.tooltip or binding.description)
    for key, what in extra:
        table.add_row(key, what)
    return table


def sections(commands: Iterable[SystemCommand]) -> list[tuple[str, Table]]:
    from haruhi_tui.app.widgets import ChatList

    from .chat import ChatScreen
    from .memory import MemoryScreen
    from .pick import CharacterPicker

    palette = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    palette.add_column(style="bold")
    palette.add_column()
    for command in commands:
        palette.add_row(command.title, command.help)
    return [
        ("In the chat", key_table(bindings_of(ChatScreen), CHAT_EXTRA)),
        ("In the chat list (ctrl+b)", key_table(bindings_of(ChatList))),
        ("In the character picker (ctrl+n)", key_table(bindings_of(CharacterPicker), PICKER_EXTRA)),
        ("On the memory screen (F3)", key_table(bindings_of(MemoryScreen))),
        ("Commands of the palette (ctrl+p, then type a few letters)", palette),
    ]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def __init__(self, commands: Iterable[SystemCommand] = ()) -> None:
        super().__init__()
        self.commands = list(commands)

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog"):
            yield Label("Keys and commands (Esc closes; scroll for more)", classes="dialog-title")
            parts = []
            for title, table in sections(self.commands):
                parts += [Text(title, style="bold underline"), table, Text("")]
            yield Static(Group(*parts), id="keys")
            yield Static(
                "Replies stream in; Esc stops one. The character's thinking (gpt-oss) is kept apart and never "
                "sent back to the model. F2 shows exactly what was sent. Chats are saved as you go.",
                classes="note",
            )
