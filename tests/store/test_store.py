"""The sessions database: schema creation and upgrades, WAL, the message tree, locked and damaged files."""

from __future__ import annotations

import sqlite3
import time

import pytest

from haruhi_tui.core.characters import load_character
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.store import SCHEMA_VERSION, Store, StoreError, current_version, upgrade


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "sessions.db"


def test_a_new_database_gets_the_whole_schema_in_wal_mode(db_path):
    store = Store(db_path)
    assert store.version == SCHEMA_VERSION
    raw = sqlite3.connect(db_path)
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"chats", "messages", "prefs", "schema_version"} <= tables
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    columns = {r[1] for r in raw.execute("PRAGMA table_info(messages)")}
    assert {"id", "chat_id", "parent_id", "role", "content", "analysis", "status", "created_at", "model"} <= columns
    raw.close()
    store.close()
    assert Store(db_path).version == SCHEMA_VERSION  # reopening applies nothing twice


def test_an_older_database_is_upgraded_and_keeps_its_chats(db_path):
    old = sqlite3.connect(db_path, isolation_level=None)
    assert upgrade(old, target=1) == [1]
    now = time.time()
    old.execute("INSERT INTO chats (id, title, character, character_name, created_at, updated_at) "
                "VALUES (1, 'old chat', 'haruhi', '春日', ?, ?)", (now, now))
    old.execute("INSERT INTO messages (id, chat_id, parent_id, role, content, created_at, updated_at) "
                "VALUES (1, 1, NULL, 'user', '你好', ?, ?)", (now, now))
    old.execute("INSERT INTO messages (id, chat_id, parent_id, role, content, status, created_at, updated_at) "
                "VALUES (2, 1, 1, 'assistant', '哼', 'incomplete', ?, ?)", (now, now))
    old.execute("UPDATE chats SET leaf_id = 2 WHERE id = 1")
    old.close()

    store = Store(db_path)
    assert store.version == SCHEMA_VERSION > 1
    branch = store.branch(1)
    assert [(m.role, m.content, m.status) for m in branch] == [
        ("user", "你好", "complete"), ("assistant", "哼", "incomplete"),
    ]
    assert branch[1].stats == {}  # the column version 2 added, with its default
    assert store.chats()[0].title == "old chat"


def test_a_database_from_a_newer_app_is_refused_with_a_reason(db_path):
    Store(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", (SCHEMA_VERSION + 5,))
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="newer haruhi-tui"):
        Store(db_path)


def test_messages_form_a_tree_with_a_current_leaf(db_path):
    store = Store(db_path)
    chat = store.create_chat("haruhi", "春日", settings={"reasoning_effort": "low"})
    user = store.add_message(chat.id, None, "user", "你好")
    first = store.add_message(chat.id, user.id, "assistant", "第一个回答")
    second = store.add_message(chat.id, user.id, "assistant", "第二个回答", status="stopped")
    assert store.chat(chat.id).leaf_id == second.id
    assert [m.content for m in store.branch(chat.id)] == ["你好", "第二个回答"]
    assert [m.id for m in store.children(user.id)] == [first.id, second.id]
    store.set_leaf(chat.id, first.id)
    assert [m.content for m in store.branch(chat.id)] == ["你好", "第一个回答"]
    store.update_chat(chat.id, scene_ids=["haruhi/1.txt", "haruhi/7.txt"])
    assert store.chat(chat.id).scene_ids == ["haruhi/1.txt", "haruhi/7.txt"]
    assert store.chat(chat.id).settings == {"reasoning_effort": "low"}
    store.rename_chat(chat.id, "SOS 团")
    assert store.chats()[0].title == "SOS 团"
    store.delete_chat(chat.id)
    assert store.chats() == [] and store.messages(chat.id) == []


def test_wal_lets_another_reader_see_committed_chats_while_a_write_is_open(db_path):
    store = Store(db_path)
    chat = store.create_chat("haruhi", "春日")
    store.add_message(chat.id, None, "user", "committed")
    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE messages SET content = 'uncommitted'")
    assert [m.content for m in store.branch(chat.id)] == ["committed"]  # readers are not blocked in WAL
    writer.execute("ROLLBACK")
    writer.close()


def test_a_locked_database_gives_a_message_that_says_what_to_do(db_path):
    store = Store(db_path, timeout=0.1)
    chat = store.create_chat("haruhi", "春日")
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked by another program") as info:
            store.add_message(chat.id, None, "user", "hello")
        assert "\n" not in str(info.value)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    store.add_message(chat.id, None, "user", "hello")


def test_a_damaged_database_file_is_reported_not_crashed_on(db_path):
    db_path.write_bytes(b"this is not a database, just some bytes " * 100)
    with pytest.raises(StoreError, match="damaged"):
        Store(db_path)


def test_an_unwritable_location_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        Store(blocker / "sessions.db")


def test_a_chat_keeps_what_was_said_while_the_database_is_locked_and_saves_it_later(db_path, characters_dir):
    store = Store(db_path, timeout=0.1)
    errors: list[str] = []
    session = ChatSession.start(store, load_character(characters_dir / "haruhi"), on_error=errors.append, greet=False)
    session.add_user_message("first line")
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    session.add_user_message("said while locked")
    assert errors and "locked" in errors[0]
    assert session.unsaved == 1
    locker.execute("ROLLBACK")
    locker.close()
    session.add_user_message("after the lock")
    assert session.unsaved == 0
    saved = store.branch(session.chat.id)
    assert [m.content for m in saved] == ["first line", "said while locked", "after the lock"]
    assert [m.parent_id for m in saved] == [None, saved[0].id, saved[1].id]
    assert store.chat(session.chat.id).leaf_id == saved[-1].id


def test_current_version_of_an_empty_file_is_zero(db_path):
    raw = sqlite3.connect(db_path)
    assert current_version(raw) == 0
