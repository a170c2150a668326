"""Role-play tables of the sessions database: personas, stored lorebooks and the lorebooks a chat uses.

The rows hold data only: a lorebook is kept as the JSON text it was imported as, and it is the services
that parse it (:mod:`haruhi_tui.core.lorebook`). The author's note and the chosen persona are columns of
``chats`` (see :class:`~haruhi_tui.store.sessions.Chat`). Mixed into :class:`~haruhi_tui.store.Store`.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from .errors import StoreError


@dataclass
class Persona:
    """Who the user plays: a name (``{{user}}``) and a description that goes into the system prompt."""

    id: int
    name: str
    description: str = ""


@dataclass
class StoredLorebook:
    id: int
    name: str
    data: str          # the lorebook JSON as imported
    source: str = ""   # the file it came from


@dataclass
class LoreAttachment:
    """A lorebook a chat uses: a stored one (``lorebook_id``) or a file read afresh each turn (``path``)."""

    id: int
    chat_id: int
    lorebook_id: int | None
    path: str
    name: str          # the stored lorebook's name, or the file's name
    position: int = 0


class RoleplayTables:
    """Store methods for personas and lorebooks (uses the Store's ``_run``/``_write`` plumbing)."""

    def _run(self, sql: str, params: tuple = ()) -> sqlite3.Cursor: ...  # provided by Store
    def _write(self, statements: list[tuple[str, tuple]]) -> list[sqlite3.Cursor]: ...  # provided by Store

    # -- personas -------------------------------------------------------------------------------
    def personas(self) -> list[Persona]:
        rows = self._run("SELECT id, name, description FROM personas ORDER BY name COLLATE NOCASE, id").fetchall()
        return [Persona(*row) for row in rows]

    def persona(self, persona_id: int) -> Persona:
        row = self._run("SELECT id, name, description FROM personas WHERE id = ?", (persona_id,)).fetchone()
        if row is None:
            raise StoreError(f"persona {persona_id} not found (deleted?)")
        return Persona(*row)

    def add_persona(self, name: str, description: str = "") -> Persona:
        name = " ".join(name.split())
        if not name:
            raise ValueError("a persona needs a name")
        now = time.time()
        cur = self._write([("INSERT INTO personas (name, description, created_at, updated_at) VALUES (?, ?, ?, ?)",
                            (name, description.strip(), now, now))])[0]
        return Persona(int(cur.lastrowid), name, description.strip())

    def update_persona(self, persona_id: int, *, name: str | None = None, description: str | None = None) -> Persona:
        values: dict[str, Any] = {}
        if name is not None:
            values["name"] = " ".join(name.split())
            if not values["name"]:
                raise ValueError("a persona needs a name")
        if description is not None:
            values["description"] = description.strip()
        values["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in values)
        self._write([(f"UPDATE personas SET {sets} WHERE id = ?", (*values.values(), persona_id))])
        return self.persona(persona_id)

    def delete_persona(self, persona_id: int) -> None:
        """Chats that used it go back to the character's usual interlocutor (``persona_id`` becomes NULL)."""
        self._write([("DELETE FROM personas WHERE id = ?", (persona_id,))])

    # -- lorebooks ------------------------------------------------------------------------------
    def lorebooks(self) -> list[StoredLorebook]:
        rows = self._run("SELECT id, name, data, source FROM lorebooks ORDER BY name COLLATE NOCASE, id").fetchall()
        return [StoredLorebook(*row) for row in rows]

    def lorebook(self, lorebook_id: int) -> StoredLorebook:
        row = self._run("SELECT id, name, data, source FROM lorebooks WHERE id = ?", (lorebook_id,)).fetchone()
        if row is None:
            raise StoreError(f"lorebook {lorebook_id} not found (deleted?)")
        return StoredLorebook(*row)

    def add_lorebook(self, name: str, data: str, source: str = "") -> StoredLorebook:
        """Keep a lorebook's JSON text (validated by the caller) under ``name``."""
        now = time.time()
        cur = self._write([("INSERT INTO lorebooks (name, data, source, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                            (name.strip() or "lorebook", data, source, now, now))])[0]
        return self.lorebook(int(cur.lastrowid))

    def delete_lorebook(self, lorebook_id: int) -> None:
        """Remove a stored lorebook; the chats that used it stop using it."""
        self._write([("DELETE FROM chat_lorebooks WHERE lorebook_id = ?", (lorebook_id,)),
                     ("DELETE FROM lorebooks WHERE id = ?", (lorebook_id,))])

    def chat_lorebooks(self, chat_id: int) -> list[LoreAttachment]:
        """The lorebooks a chat uses, in the order they were attached (earlier ones first in the budget)."""
        rows = self._run(
            "SELECT a.id, a.chat_id, a.lorebook_id, a.path, COALESCE(l.name, ''), a.position FROM chat_lorebooks a "
            "LEFT JOIN lorebooks l ON l.id = a.lorebook_id WHERE a.chat_id = ? ORDER BY a.position, a.id", (chat_id,)
        ).fetchall()
        return [LoreAttachment(i, c, lb, path, name or path.replace("\\", "/").rsplit("/", 1)[-1], pos)
                for i, c, lb, path, name, pos in rows]

    def attach_lorebook(self, chat_id: int, *, lorebook_id: int | None = None, path: str = "") -> LoreAttachment:
        """Attach a stored lorebook or a file path to a chat (attaching the same one twice is a no-op)."""
        if (lorebook_id is None) == (not path):
            raise ValueError("attach either a stored lorebook or a file path")
        for attached in self.chat_lorebooks(chat_id):
            if (lorebook_id is not None and attached.lorebook_id == lorebook_id) or (path and attached.path == path):
                return attached
        cur = self._write([(
            "INSERT INTO chat_lorebooks (chat_id, lorebook_id, path, position) "
            "VALUES (?, ?, ?, (SELECT COALESCE(MAX(position), 0) + 1 FROM chat_lorebooks WHERE chat_id = ?))",
            (chat_id, lorebook_id, path, chat_id),
        )])[0]
        return next(a for a in self.chat_lorebooks(chat_id) if a.id == cur.lastrowid)

    def detach_lorebook(self, attachment_id: int) -> None:
        self._write([("DELETE FROM chat_lorebooks WHERE id = ?", (attachment_id,))])
