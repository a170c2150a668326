"""The sidebar: saved chats, most recent first. Enter resumes; r renames; d deletes; any other letter goes
to the message box (the user meant to talk, not to give the list a command)."""

from __future__ import annotations

import time

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from haruhi_tui.store import Chat


def _when(ts: float) -> str:
    age = time.time() - ts
    if age < 86400:
        return time.strftime("%H:%M", time.localtime(ts))
    return time.strftime("%m-%d", time.localtime(ts))


class ChatList(OptionList):
    BINDINGS = [
        Binding("r", "rename", "Rename", show=False, tooltip="Rename the highlighted chat"),
        Binding("d,delete", "delete", "Delete", show=False, tooltip="Delete the highlighted chat (asks first)"),
    ]

    class Rename(Message):
        def __init__(self, chat_id: int) -> None:
            super().__init__()
            self.chat_id = chat_id

    class Delete(Message):
        def __init__(self, chat_id: int) -> None:
            super().__init__()
            self.chat_id = chat_id

    class TypedText(Message):
        """A printable key that is not one of the list's keys."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def on_key(self, event: events.Key) -> None:
        if event.is_printable and event.character and event.key not in ("r", "d"):
            event.stop()
            event.prevent_default()
            self.post_message(self.TypedText(event.character))

    def show_chats(self, chats: list[Chat], current: int | None = None) -> None:
        self.clear_options()
        width = max(8, (self.size.width or 26) - 4)
        for chat in chats:
            label = Text(" ".join((chat.title or chat.character_name).split()))
            label.truncate(width, overflow="ellipsis")
            label.append(f"\n{chat.character_name} · {_when(chat.updated_at)}", style="dim")
            self.add_option(Option(label, id=str(chat.id)))
        if current is not None:
            for index in range(self.option_count):
                if self.get_option_at_index(index).id == str(current):
                    self.highlighted = index

    @property
    def highlighted_chat(self) -> int | None:
        if self.highlighted is None:
            return None
        option = self.get_option_at_index(self.highlighted)
        return int(option.id) if option.id else None

    def action_rename(self) -> None:
        if self.highlighted_chat is not None:
            self.post_message(self.Rename(self.highlighted_chat))

    def action_delete(self) -> None:
        if self.highlighted_chat is not None:
            self.post_message(self.Delete(self.highlighted_chat))
