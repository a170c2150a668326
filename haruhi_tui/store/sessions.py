"""Chat sessions in SQLite: chats, their message tree, and small preferences.

One connection per :class:`Store`, shared by the UI thread and the generation worker under a lock
(SQLite serialises writers anyway; the lock keeps one connection's statements from interleaving).
WAL mode lets another reader (a second app, an export) see committed chats while we write.
Every failure becomes a :class:`StoreError` whose message says what to do.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import schema
from .errors import StoreError
from .groups import ChatMember, GroupTables, new_chat_member_statements
from .roleplay import RoleplayTables

Role = Literal["system", "user", "assistant"]
Status = Literal["complete", "incomplete", "stopped", "error"]
STATUSES: tuple[Status, ...] = ("complete", "incomplete", "stopped", "error")
MEMORY = ":memory:"


@dataclass
class Chat:
    id: int
    title: str
    character: str
    character_name: str
    model: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    scene_ids: list[str] = field(default_factory=list)
    leaf_id: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    summary: str = ""
    summary_upto: int | None = None
    persona_id: int | None = None     # None: the character's usual interlocutor (see ChatSession.persona)
    authors_note: str = ""
    note_depth: int = 4


@dataclass
class Pin:
    """A fact the user pinned to a chat: always in the prompt, whatever the history window holds."""

    id: int
    chat_id: int
    text: str
    position: int = 0


@dataclass
class Message:
    id: int
    chat_id: int
    parent_id: int | None
    role: Role
    content: str = ""
    analysis: str = ""
    status: Status = "complete"
    model: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    character: str = ""  # in a group chat, the folder of the character who spoke this reply


def _explain(exc: sqlite3.Error, path: str) -> str:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return (
            f"the sessions database {path} is locked by another program (another haruhi-tui?): "
            "close it and try again; nothing said so far is lost"
        )
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return f"the sessions database {path} is damaged ({exc}): move it aside (or pass --db) to start a new one"
    if "readonly" in text or "read-only" in text or "unable to open" in text or "permission" in text:
        return f"cannot write the sessions database {path} ({exc}): check its permissions or pass --db elsewhere"
    if "disk" in text and "full" in text:
        return f"disk full while saving to {path}: free some space; the chat stays on screen"
    return f"sessions database {path}: {exc}"


class Store(RoleplayTables, GroupTables):
    """The sessions database. ``path`` may be :data:`MEMORY` for a store that is not kept."""

    def __init__(self, path: str | Path, *, timeout: float = 2.0) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._cols: dict[str, list[str]] = {}
        try:
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(_explain(exc, self.path) if isinstance(exc, sqlite3.Error)
                             else f"cannot open the sessions database {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            if self.path != MEMORY:
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"the sessions database {self.path} cannot use WAL mode (journal_mode={mode})")
                self._db.execute("PRAGMA synchronous = NORMAL")
            version = schema.current_version(self._db)
            if version > schema.SCHEMA_VERSION:
                raise StoreError(
                    f"the sessions database {self.path} is from a newer haruhi-tui (schema {version}, this one knows "
                    f"{schema.SCHEMA_VERSION}): upgrade haruhi-tui or pass --db with another file"
                )
            schema.upgrade(self._db)
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(_explain(exc, self.path)) from exc
        except BaseException:
            self._db.close()
            raise

    # -- plumbing -------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def version(self) -> int:
        with self._lock:
            return schema.current_version(self._db)

    def _run(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, params)
            except sqlite3.Error as exc:
                raise StoreError(_explain(exc, self.path)) from exc

    def _write(self, statements: list[tuple[str, tuple]]) -> list[sqlite3.Cursor]:
        """Run statements in one IMMEDIATE transaction (all or nothing)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(_explain(exc, self.path)) from exc
            try:
                cursors = [self._db.execute(sql, params) for sql, params in statements]
                self._db.execute("COMMIT")
                return cursors
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise StoreError(_explain(exc, self.path)) from exc

    # -- chats ----------------------------------------------------------------------------------
    def create_chat(self, character: str, character_name: str, *, title: str = "", model: str = "",
                    settings: dict[str, Any] | None = None, members: list[ChatMember] | None = None) -> Chat:
        """A new chat; with ``members`` (two or more characters, in turn order) a group chat, all in one write."""
        now = time.time()
        cur = self._write([(
            "INSERT INTO chats (title, character, character_name, model, settings, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (title, character, character_name, model, json.dumps(settings or {}, ensure_ascii=False), now, now),
        ), *new_chat_member_statements(members or [])])[0]
        return self.chat(int(cur.lastrowid))

    def chat(self, chat_id: int) -> Chat:
        row = self._run("SELECT * FROM chats WHERE id = ?", (chat_id,)).fetchone()
        if row is None:
            raise StoreError(f"chat {chat_id} not found (deleted?)")
        return _chat(row, self._columns("chats"))

    def chats(self, limit: int = 200) -> list[Chat]:
        """Chats, most recently used first."""
        cols = self._columns("chats")
        rows = self._run("SELECT * FROM chats ORDER BY updated_at DESC, id DESC LIMIT ?", (limit,)).fetchall()
        return [_chat(row, cols) for row in rows]

    def update_chat(self, chat_id: int, **fields: Any) -> None:
        """Set some of title, model, settings, scene_ids, leaf_id, persona_id, authors_note, note_depth (and touch
        updated_at)."""
        allowed = {"title", "model", "settings", "scene_ids", "leaf_id", "character_name", "persona_id", "authors_note",
                   "note_depth"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        values = {k: json.dumps(v, ensure_ascii=False) if k in ("settings", "scene_ids") else v
                  for k, v in fields.items()}
        values["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in values)
        self._write([(f"UPDATE chats SET {sets} WHERE id = ?", (*values.values(), chat_id))])

    def rename_chat(self, chat_id: int, title: str) -> None:
        self.update_chat(chat_id, title=title.strip())

    def delete_chat(self, chat_id: int) -> None:
        self._write([
            ("UPDATE chats SET leaf_id = NULL, summary_upto = NULL WHERE id = ?", (chat_id,)),
            ("DELETE FROM pins WHERE chat_id = ?", (chat_id,)),
            ("DELETE FROM chat_lorebooks WHERE chat_id = ?", (chat_id,)),
            ("DELETE FROM chat_members WHERE chat_id = ?", (chat_id,)),
            ("DELETE FROM messages WHERE chat_id = ?", (chat_id,)),
            ("DELETE FROM chats WHERE id = ?", (chat_id,)),
        ])

    # -- messages -------------------------------------------------------------------------------
    def add_message(self, chat_id: int, parent_id: int | None, role: Role, content: str = "", *,
                    analysis: str = "", status: Status = "complete", model: str = "",
                    stats: dict[str, Any] | None = None, make_leaf: bool = True, character: str = "") -> Message:
        """Insert a message under ``parent_id`` and (by default) make it the chat's current leaf, atomically.
        ``character``: in a group chat, the folder of the character who speaks it."""
        now = time.time()
        statements = [(
            "INSERT INTO messages (chat_id, parent_id, role, content, analysis, status, model, created_at, updated_at, "
            "stats, character) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (chat_id, parent_id, role, content, analysis, status, model, now, now, json.dumps(stats or {}), character),
        )]
        if make_leaf:
            statements.append((
                "UPDATE chats SET leaf_id = last_insert_rowid(), updated_at = ? WHERE id = ?", (now, chat_id)
            ))
        cur = self._write(statements)[0]
        return Message(int(cur.lastrowid), chat_id, parent_id, role, content, analysis, status, model, now, now,
                       dict(stats or {}), character)

    def update_message(self, message_id: int, *, content: str | None = None, analysis: str | None = None,
                       status: Status | None = None, stats: dict[str, Any] | None = None) -> None:
        values: dict[str, Any] = {}
        if content is not None:
            values["content"] = content
        if analysis is not None:
            values["analysis"] = analysis
        if status is not None:
            values["status"] = status
        if stats is not None:
            values["stats"] = json.dumps(stats)
        values["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in values)
        self._write([(f"UPDATE messages SET {sets} WHERE id = ?", (*values.values(), message_id))])

    def message(self, message_id: int) -> Message:
        row = self._run("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise StoreError(f"message {message_id} not found")
        return _message(row, self._columns("messages"))

    def messages(self, chat_id: int) -> list[Message]:
        """Every message of a chat (all branches), oldest first."""
        cols = self._columns("messages")
        rows = self._run("SELECT * FROM messages WHERE chat_id = ? ORDER BY id", (chat_id,)).fetchall()
        return [_message(row, cols) for row in rows]

    def branch(self, chat_id: int, leaf_id: int | None = None) -> list[Message]:
        """The messages from the root to ``leaf_id`` (default: the chat's current leaf)."""
        if leaf_id is None:
            leaf_id = self.chat(chat_id).leaf_id
        if leaf_id is None:
            return []
        by_id = {m.id: m for m in self.messages(chat_id)}
        path: list[Message] = []
        node = by_id.get(leaf_id)
        while node is not None:
            path.append(node)
            node = by_id.get(node.parent_id) if node.parent_id is not None else None
        path.reverse()
        return path

    def children(self, message_id: int) -> list[Message]:
        cols = self._columns("messages")
        rows = self._run("SELECT * FROM messages WHERE parent_id = ? ORDER BY id", (message_id,)).fetchall()
        return [_message(row, cols) for row in rows]

    def set_leaf(self, chat_id: int, leaf_id: int | None) -> None:
        self.update_chat(chat_id, leaf_id=leaf_id)

    def siblings(self, message_id: int) -> list[Message]:
        """The message and its alternatives (same parent, same chat), oldest first."""
        m = self.message(message_id)
        cols = self._columns("messages")
        if m.parent_id is None:
            rows = self._run("SELECT * FROM messages WHERE chat_id = ? AND parent_id IS NULL ORDER BY id",
                             (m.chat_id,)).fetchall()
        else:
            rows = self._run("SELECT * FROM messages WHERE parent_id = ? ORDER BY id", (m.parent_id,)).fetchall()
        return [_message(row, cols) for row in rows]

    def latest_leaf(self, message_id: int) -> int:
        """The newest leaf under ``message_id`` (itself if it has no children): where a branch switch lands."""
        node = message_id
        while True:
            row = self._run("SELECT MAX(id) FROM messages WHERE parent_id = ?", (node,)).fetchone()
            if row is None or row[0] is None:
                return node
            node = int(row[0])

    def delete_message(self, message_id: int, new_leaf: int | None) -> None:
        """Delete a message and every message under it, and make ``new_leaf`` the chat's leaf, atomically. A
        summary that covered one of them goes too (it summed up turns that no longer exist)."""
        chat_id = self.message(message_id).chat_id
        children: dict[int | None, list[int]] = {}
        for m in self.messages(chat_id):
            children.setdefault(m.parent_id, []).append(m.id)
        doomed, todo = [], [message_id]
        while todo:
            node = todo.pop()
            doomed.append(node)
            todo.extend(children.get(node, []))
        marks = ",".join("?" * len(doomed))
        self._write([
            ("UPDATE chats SET leaf_id = ?, updated_at = ? WHERE id = ?", (new_leaf, time.time(), chat_id)),
            (f"UPDATE chats SET summary = '', summary_upto = NULL WHERE id = ? AND summary_upto IN ({marks})",
             (chat_id, *doomed)),
            *[("DELETE FROM messages WHERE id = ?", (m,)) for m in reversed(doomed)],
        ])

    # -- long-term memory -----------------------------------------------------------------------
    def pins(self, chat_id: int) -> list[Pin]:
        rows = self._run("SELECT id, chat_id, text, position FROM pins WHERE chat_id = ? ORDER BY position, id",
                         (chat_id,)).fetchall()
        return [Pin(*row) for row in rows]

    def add_pin(self, chat_id: int, text: str) -> Pin:
        text = text.strip()
        if not text:
            raise ValueError("empty pin")
        now = time.time()
        cur = self._write([(
            "INSERT INTO pins (chat_id, text, position, created_at, updated_at) "
            "VALUES (?, ?, (SELECT COALESCE(MAX(position), 0) + 1 FROM pins WHERE chat_id = ?), ?, ?)",
            (chat_id, text, chat_id, now, now),
        )])[0]
        row = self._run("SELECT id, chat_id, text, position FROM pins WHERE id = ?", (cur.lastrowid,)).fetchone()
        return Pin(*row)

    def update_pin(self, pin_id: int, text: str) -> None:
        text = text.strip()
        if not text:
            raise ValueError("empty pin")
        self._write([("UPDATE pins SET text = ?, updated_at = ? WHERE id = ?", (text, time.time(), pin_id))])

    def delete_pin(self, pin_id: int) -> None:
        self._write([("DELETE FROM pins WHERE id = ?", (pin_id,))])

    def set_summary(self, chat_id: int, summary: str, upto: int | None) -> None:
        """The chat's rolling summary and the last message it covers (None: the user wrote it by hand)."""
        self._write([("UPDATE chats SET summary = ?, summary_upto = ?, updated_at = ? WHERE id = ?",
                      (summary.strip(), upto, time.time(), chat_id))])

    def recent_user_lines(self, limit: int = 200) -> list[str]:
        """What the user typed lately (all chats), oldest first: the input box's history."""
        rows = self._run(
            "SELECT content FROM messages WHERE role = 'user' ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        seen: set[str] = set()
        lines: list[str] = []
        for (content,) in rows:
            if content not in seen:
                seen.add(content)
                lines.append(content)
        lines.reverse()
        return lines

    # -- preferences ----------------------------------------------------------------------------
    def pref(self, key: str, default: Any = None) -> Any:
        row = self._run("SELECT value FROM prefs WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_pref(self, key: str, value: Any) -> None:
        self._write([(
            "INSERT INTO prefs (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value, ensure_ascii=False)),
        )])

    def _columns(self, table: str) -> list[str]:
        with self._lock:
            if table not in self._cols:
                self._cols[table] = [r[1] for r in self._run(f"PRAGMA table_info({table})").fetchall()]
            return self._cols[table]


def _chat(row: tuple, cols: list[str]) -> Chat:
    d = dict(zip(cols, row))
    return Chat(
        id=d["id"], title=d["title"], character=d["character"], character_name=d["character_name"],
        model=d["model"], settings=json.loads(d["settings"] or "{}"), scene_ids=json.loads(d["scene_ids"] or "[]"),
        leaf_id=d["leaf_id"], created_at=d["created_at"], updated_at=d["updated_at"],
        summary=d.get("summary") or "", summary_upto=d.get("summary_upto"), persona_id=d.get("persona_id"),
        authors_note=d.get("authors_note") or "", note_depth=d["note_depth"] if d.get("note_depth") is not None else 4,
    )


def _message(row: tuple, cols: list[str]) -> Message:
    d = dict(zip(cols, row))
    return Message(
        id=d["id"], chat_id=d["chat_id"], parent_id=d["parent_id"], role=d["role"], content=d["content"],
        analysis=d["analysis"], status=d["status"], model=d["model"], created_at=d["created_at"],
        updated_at=d["updated_at"], stats=json.loads(d.get("stats") or "{}"), character=d.get("character") or "",
    )
