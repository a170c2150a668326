"""The group chat schema step: a v5 database (role-play depth) upgrades in place with nothing lost; chats get
members and replies record who spoke."""

from __future__ import annotations

import sqlite3
import time

import pytest

from haruhi_tui.store import SCHEMA_VERSION, ChatMember, Store, StoreError, upgrade
from haruhi_tui.store.schema import UPGRADES, _v6_group_chats

GROUP_VERSION = UPGRADES.index(_v6_group_chats) + 1


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "sessions.db"


def _v5_database(path) -> None:
    """A database as version 5 left it: a chat with a branch, a persona and an author's note."""
    assert GROUP_VERSION == 6
    old = sqlite3.connect(path, isolation_level=None)
    assert upgrade(old, target=GROUP_VERSION - 1) == [1, 2, 3, 4, 5]
    now = time.time()
    old.execute("INSERT INTO personas (id, name, description, created_at, updated_at) VALUES (1, 'Kyon', '', ?, ?)",
                (now, now))
    old.execute("INSERT INTO chats (id, title, character, character_name, settings, created_at, updated_at, "
                "persona_id, authors_note) VALUES (1, 'old chat', 'haruhi', '春日', '{}', ?, ?, 1, '[兴奋]')",
                (now, now))
    old.execute("INSERT INTO messages (id, chat_id, parent_id, role, content, created_at, updated_at) "
                "VALUES (1, 1, NULL, 'user', '你好', ?, ?)", (now, now))
    old.execute("INSERT INTO messages (id, chat_id, parent_id, role, content, created_at, updated_at) "
                "VALUES (2, 1, 1, 'assistant', '哼', ?, ?)", (now, now))
    old.execute("UPDATE chats SET leaf_id = 2 WHERE id = 1")
    old.close()


def test_a_v5_database_upgrades_in_place_and_keeps_everything(db_path):
    _v5_database(db_path)
    store = Store(db_path)
    assert store.version == SCHEMA_VERSION >= GROUP_VERSION
    chat = store.chat(1)
    assert (chat.title, chat.leaf_id, chat.persona_id, chat.authors_note) == ("old chat", 2, 1, "[兴奋]")
    assert [(m.content, m.character) for m in store.branch(1)] == [("你好", ""), ("哼", "")]
    assert store.chat_members(1) == [] and store.group_chat_ids() == set()  # still a chat with 春日 alone

    group = store.create_chat("haruhi", "春日, 长门", title="春日, 长门",
                              members=[ChatMember("haruhi", "春日"), ChatMember("nagato", "长门")])
    greeting = store.add_message(group.id, None, "assistant", "……", character="nagato")
    store.add_message(group.id, greeting.id, "user", "你好")
    store.close()

    reopened = Store(db_path)
    assert reopened.chat_members(group.id) == [ChatMember("haruhi", "春日"), ChatMember("nagato", "长门")]
    assert reopened.group_chat_ids() == {group.id} and reopened.chat_members(1) == []
    assert [(m.role, m.character) for m in reopened.branch(group.id)] == [("assistant", "nagato"), ("user", "")]
    reopened.delete_chat(group.id)
    assert reopened.chat_members(group.id) == [] and reopened.group_chat_ids() == set()


def test_a_failed_upgrade_leaves_version_5_intact(db_path):
    _v5_database(db_path)
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("CREATE TABLE chat_members (id INTEGER PRIMARY KEY)")  # a clash makes the step fail midway
    with pytest.raises(sqlite3.OperationalError):
        upgrade(raw)
    assert "character" not in {r[1] for r in raw.execute("PRAGMA table_info(messages)")}
    assert raw.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == GROUP_VERSION - 1
    raw.close()


def test_a_chat_with_a_member_twice_is_refused_whole(db_path):
    store = Store(db_path)
    with pytest.raises(StoreError):
        store.create_chat("haruhi", "春日", members=[ChatMember("haruhi", "春日"), ChatMember("haruhi", "春日")])
    assert store.chats() == []  # the chat row went with the refused members
