"""The group chat's speaker bar: the members in their colours, who answers next and why, and the keys for it.

Shown only in a group chat, one line above the message box::

    Next: 长门 (auto) │ 春日 · ▸长门 · 古泉 │ ctrl+g picks · Enter: next speaks

"auto": by mention, then in turn; "picked": the member ctrl+g picked; Enter on an empty line lets them speak.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from haruhi_tui.services.chat import ChatSession
from haruhi_tui.services.group_chat import GroupSession

from .message import character_color


class SpeakerBar(Static):
    DEFAULT_CSS = """
    SpeakerBar { height: 1; padding: 0 1; color: $text-muted; display: none; }
    """

    def show(self, session: ChatSession | None, speaking: str = "") -> None:
        """Show ``session``'s members and who is next (``speaking``: the member replying now); hidden for a chat
        with one character."""
        self.display = isinstance(session, GroupSession)
        if not isinstance(session, GroupSession):
            return
        nxt = session.character if speaking else session.next_speaker()
        how = "speaking" if speaking else "picked" if session.chosen is not None else "auto"
        line = Text("Now: " if speaking else "Next: ")
        line.append(nxt.name, style=f"bold {character_color(nxt.folder)}")
        line.append(f" ({how}) │ ")
        for i, member in enumerate(session.members):
            if i:
                line.append(" · ")
            mark = "▸" if member.folder == nxt.folder else ""
            line.append(mark + member.name, style=character_color(member.folder) + (" bold" if mark else ""))
        line.append(" │ ctrl+g picks · Enter: next speaks")
        self.update(line)
