"""The sessions database schema: a version table and ordered upgrade functions.

Each entry of :data:`UPGRADES` takes the database from version ``n - 1`` to ``n`` inside one
transaction, so a crash mid-upgrade leaves the previous version intact. A database newer than the
app knows is refused rather than guessed at. To change the schema, append a function; never edit
one that has shipped.

Version 1 is the conversation model the app grows into: messages form a tree (``parent_id``), a chat
points at its current leaf, so edit-and-branch, regenerate alternatives and side-by-side compares are
siblings under one parent. Pinned facts, a rolling summary, a jobs table and role-play depth (personas,
lorebooks, the author's note) come as later versions.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Callable

Upgrade = Callable[[sqlite3.Connection], None]


def _v1_conversations(db: sqlite3.Connection) -> None:
    """Chats, the message tree, and small preferences (per character reasoning effort, last model)."""
    db.execute(
        """
        CREATE TABLE chats (
            id             INTEGER PRIMARY KEY,
            title          TEXT    NOT NULL DEFAULT '',
            character      TEXT    NOT NULL,              -- ChatHaruhi folder name
            character_name TEXT    NOT NULL DEFAULT '',   -- speaking name when the chat began
            model          TEXT    NOT NULL DEFAULT '',   -- GGUF path last used
            settings       TEXT    NOT NULL DEFAULT '{}', -- JSON: user_name, reasoning_effort, sampling
            scene_ids      TEXT    NOT NULL DEFAULT '[]', -- JSON: sticky classic scenes (stable prompt prefix)
            leaf_id        INTEGER REFERENCES messages(id) ON DELETE SET NULL,
            created_at     REAL    NOT NULL,
            updated_at     REAL    NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE messages (
            id         INTEGER PRIMARY KEY,
            chat_id    INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
            parent_id  INTEGER REFERENCES messages(id) ON DELETE CASCADE,
            role       TEXT    NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content    TEXT    NOT NULL DEFAULT '',
            analysis   TEXT    NOT NULL DEFAULT '',       -- harmony analysis channel, never fed back
            status     TEXT    NOT NULL DEFAULT 'complete'
                       CHECK (status IN ('complete', 'incomplete', 'stopped', 'error')),
            model      TEXT    NOT NULL DEFAULT '',
            created_at REAL    NOT NULL,
            updated_at REAL    NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX messages_by_parent ON messages(chat_id, parent_id)")
    db.execute("CREATE INDEX chats_by_update ON chats(updated_at)")
    db.execute("CREATE TABLE prefs (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _v2_generation_stats(db: sqlite3.Connection) -> None:
    """Per-reply generation stats (prompt tokens, cache reuse, tokens/s) for the status line and compares."""
    db.execute("ALTER TABLE messages ADD COLUMN stats TEXT NOT NULL DEFAULT '{}'")


def _v3_memory(db: sqlite3.Connection) -> None:
    """Long-term memory: pinned facts per chat, and the chat's rolling summary with the message it reaches.

    The summary covers the branch from the root to ``summary_upto``; on another branch (an earlier
    message edited) it no longer applies, and the chat falls back to no summary until one is written.
    """
    db.execute(
        """
        CREATE TABLE pins (
            id         INTEGER PRIMARY KEY,
            chat_id    INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
            text       TEXT    NOT NULL,
            position   INTEGER NOT NULL DEFAULT 0,
            created_at REAL    NOT NULL,
            updated_at REAL    NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX pins_by_chat ON pins(chat_id, position)")
    db.execute("ALTER TABLE chats ADD COLUMN summary TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE chats ADD COLUMN summary_upto INTEGER REFERENCES messages(id) ON DELETE SET NULL")


def _v4_jobs(db: sqlite3.Connection) -> None:
    """Launcher jobs (train, convert, eval): what ran, where it writes, the process to signal, how it ended.

    ``output`` is the folder holding the job's events.jsonl; a running job owns it (no second job may
    start there). Progress lives in events.jsonl, not here: the row keeps what the history list shows.
    """
    db.execute(
        """
        CREATE TABLE jobs (
            id         INTEGER PRIMARY KEY,
            kind       TEXT    NOT NULL CHECK (kind IN ('train', 'convert', 'eval')),
            title      TEXT    NOT NULL DEFAULT '',
            command    TEXT    NOT NULL DEFAULT '[]',       -- JSON argv
            config     TEXT    NOT NULL DEFAULT '{}',       -- JSON: the form it came from, follow-up jobs
            output     TEXT    NOT NULL,                    -- folder with events.jsonl
            log_path   TEXT    NOT NULL DEFAULT '',
            cwd        TEXT    NOT NULL DEFAULT '',
            pid        INTEGER,                             -- process group leader (start_new_session)
            status     TEXT    NOT NULL DEFAULT 'running'
                       CHECK (status IN ('running', 'completed', 'cancelled', 'failed')),
            error      TEXT    NOT NULL DEFAULT '',
            metrics    TEXT    NOT NULL DEFAULT '{}',
            outputs    TEXT    NOT NULL DEFAULT '{}',
            started_at REAL    NOT NULL,
            ended_at   REAL
        )
        """
    )
    db.execute("CREATE INDEX jobs_by_output ON jobs(output, status)")


def _v5_roleplay(db: sqlite3.Connection) -> None:
    """Role-play depth, as SillyTavern users know it: user personas (a name and a description, chosen per
    chat; NULL is the character's usual interlocutor), lorebooks kept in the database (the file's text as
    imported, SillyTavern world info or a card's character_book), the lorebooks attached to each chat (a
    stored one, or a file path read afresh each turn), and each chat's author's note with its depth."""
    db.execute(
        """
        CREATE TABLE personas (
            id          INTEGER PRIMARY KEY,
            name        TEXT    NOT NULL,
            description TEXT    NOT NULL DEFAULT '',
            created_at  REAL    NOT NULL,
            updated_at  REAL    NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE lorebooks (
            id         INTEGER PRIMARY KEY,
            name       TEXT    NOT NULL,
            data       TEXT    NOT NULL,                   -- the lorebook JSON as imported
            source     TEXT    NOT NULL DEFAULT '',        -- the file it came from
            created_at REAL    NOT NULL,
            updated_at REAL    NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE chat_lorebooks (
            id          INTEGER PRIMARY KEY,
            chat_id     INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
            lorebook_id INTEGER REFERENCES lorebooks(id) ON DELETE CASCADE,  -- a stored lorebook, or
            path        TEXT    NOT NULL DEFAULT '',                         -- a file attached by path
            position    INTEGER NOT NULL DEFAULT 0,
            CHECK ((lorebook_id IS NULL) != (path = ''))
        )
        """
    )
    db.execute("CREATE INDEX chat_lorebooks_by_chat ON chat_lorebooks(chat_id, position)")
    db.execute("ALTER TABLE chats ADD COLUMN persona_id INTEGER REFERENCES personas(id) ON DELETE SET NULL")
    db.execute("ALTER TABLE chats ADD COLUMN authors_note TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE chats ADD COLUMN note_depth INTEGER NOT NULL DEFAULT 4")


UPGRADES: list[Upgrade] = [_v1_conversations, _v2_generation_stats, _v3_memory, _v4_jobs, _v5_roleplay]
SCHEMA_VERSION = len(UPGRADES)


def current_version(db: sqlite3.Connection) -> int:
    has_table = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not has_table:
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def upgrade(db: sqlite3.Connection, target: int = SCHEMA_VERSION) -> list[int]:
    """Apply the upgrades from the database's version up to ``target``; returns the versions applied.

    ``db`` must be in autocommit mode (``isolation_level=None``): each step runs in its own
    ``BEGIN IMMEDIATE`` transaction together with its row in ``schema_version``.
    """
    applied: list[int] = []
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = current_version(db)
            if version >= target:
                db.execute("COMMIT")
                return applied
            UPGRADES[version](db)
            db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version + 1, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(version + 1)
