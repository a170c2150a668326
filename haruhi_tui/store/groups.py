"""Group chat rows of the sessions database: which characters a chat has, in the order they take turns.

A chat with member rows is a group chat; one without is with ``chats.character`` alone, as every chat was
before. Which member spoke a reply is the message's ``character`` column (see
:class:`~haruhi_tui.store.sessions.Message`). Mixed into :class:`~haruhi_tui.store.Store`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class ChatMember:
    """A character in a group chat: its folder and the speaking name it had when the chat began."""

    character: str
    character_name: str = ""


class GroupTables:
    """Store methods for group chats (uses the Store's ``_run`` plumbing)."""

    def _run(self, sql: str, params: tuple = ()) -> sqlite3.Cursor: ...  # provided by Store

    def chat_members(self, chat_id: int) -> list[ChatMember]:
        """The chat's characters in turn order; empty for a chat with one character."""
        rows = self._run("SELECT character, character_name FROM chat_members WHERE chat_id = ? ORDER BY position, id",
                         (chat_id,)).fetchall()
        return [ChatMember(*row) for row in rows]

    def group_chat_ids(self) -> set[int]:
        """The ids of every group chat (chats with members)."""
        return {row[0] for row in self._run("SELECT DISTINCT chat_id FROM chat_members").fetchall()}


def new_chat_member_statements(members: list[ChatMember]) -> list[tuple[str, tuple]]:
    """The inserts that give the chat inserted just before them, in the same transaction, its members in order
    (the newest chat has the largest id: SQLite numbers a new row one past the largest)."""
    sql = ("INSERT INTO chat_members (chat_id, character, character_name, position) "
           "VALUES ((SELECT MAX(id) FROM chats), ?, ?, ?)")
    return [(sql, (m.character, m.character_name, i)) for i, m in enumerate(members)]
