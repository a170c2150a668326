"""The long-term memory schema step (pins, rolling summary): an older database upgrades in place, nothing lost.

(Named for the task's 'v2'; the step is schema version 3, after the generation-stats column.)
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from haruhi_tui.store import SCHEMA_VERSION, Store, upgrade
from haruhi_tui.store.schema import UPGRADES, _v3_memory

MEMORY_VERSION = UPGRADES.index(_v3_memory) + 1


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "sessions.db"


def _old_database(path, version: int) -> None:
    old = sqlite3.connect(path, isolation_level=None)
    assert upgrade(old, target=version) == list(range(1, version + 1))
    now = time.time()
    old.execute("INSERT INTO chats (id, title, character, character_name, created_at, updated_at) "
                "VALUES (1, 'old chat', 'haruhi', '春日', ?, ?)", (now, now))
    old.execute("INSERT INTO messages (id, chat_id, parent_id, role, content, created_at, updated_at) "
                "VALUES (1, 1, NULL, 'user', '你好', ?, ?)", (now, now))
    old.execute("INSERT INTO messages (id, chat_id, parent_id, role, content, created_at, updated_at) "
                "VALUES (2, 1, 1, 'assistant', '哼', ?, ?)", (now, now))
    old.execute("INSERT INTO messages (id, chat_id, parent_id, role, content, created_at, updated_at) "
                "VALUES (3, 1, 1, 'assistant', '无聊', ?, ?)", (now, now))
    old.execute("UPDATE chats SET leaf_id = 2 WHERE id = 1")
    old.close()


@pytest.mark.parametrize("from_version", [1, MEMORY_VERSION - 1])
def test_an_older_database_gains_memory_in_place_and_keeps_everything(db_path, from_version):
    _old_database(db_path, from_version)
    store = Store(db_path)
    assert store.version == SCHEMA_VERSION >= MEMORY_VERSION
    chat = store.chat(1)
    assert (chat.title, chat.leaf_id, chat.summary, chat.summary_upto) == ("old chat", 2, "", None)
    assert [m.content for m in store.branch(1)] == ["你好", "哼"]
    assert [m.content for m in store.siblings(2)] == ["哼", "无聊"]
    assert store.pins(1) == []
    store.add_pin(1, "Kyon is afraid of frogs")
    store.set_summary(1, "They met in the club room.", 2)
    store.close()

    reopened = Store(db_path)
    assert [p.text for p in reopened.pins(1)] == ["Kyon is afraid of frogs"]
    assert (reopened.chat(1).summary, reopened.chat(1).summary_upto) == ("They met in the club room.", 2)


def test_a_failed_memory_upgrade_leaves_the_old_version_intact(db_path):
    _old_database(db_path, MEMORY_VERSION - 1)
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("CREATE TABLE pins (id INTEGER PRIMARY KEY)")  # a clash makes the step fail midway
    with pytest.raises(sqlite3.OperationalError):
        upgrade(raw)
    cols = {r[1] for r in raw.execute("PRAGMA table_info(chats)")}
    assert "summary" not in cols
    assert raw.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == MEMORY_VERSION - 1
    assert raw.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 3
    raw.close()


def test_pins_add_edit_remove_in_order_and_go_with_their_chat(db_path):
    store = Store(db_path)
    a = store.create_chat("haruhi", "春日")
    b = store.create_chat("haruhi", "春日")
    first = store.add_pin(a.id, "  likes tea ")
    second = store.add_pin(a.id, "owns a cat")
    store.add_pin(b.id, "other chat")
    assert [p.text for p in store.pins(a.id)] == ["likes tea", "owns a cat"]
    store.update_pin(first.id, "likes green tea")
    store.delete_pin(second.id)
    assert [p.text for p in store.pins(a.id)] == ["likes green tea"]
    with pytest.raises(ValueError):
        store.add_pin(a.id, "   ")
    store.delete_chat(a.id)
    assert store.pins(a.id) == []
    assert [p.text for p in store.pins(b.id)] == ["other chat"]


def test_latest_leaf_follows_the_newest_child(db_path):
    store = Store(db_path)
    chat = store.create_chat("haruhi", "春日")
    u = store.add_message(chat.id, None, "user", "hi")
    r1 = store.add_message(chat.id, u.id, "assistant", "one")
    u2 = store.add_message(chat.id, r1.id, "user", "more")
    store.add_message(chat.id, u.id, "assistant", "two")
    assert store.latest_leaf(r1.id) == u2.id
    assert store.latest_leaf(u.id) != u2.id
