"""The role-play schema step (personas, lorebooks, a chat's attachments and author's note): an older database
upgrades in place with nothing lost, and the new tables behave."""

from __future__ import annotations

import sqlite3
import time

import pytest

from haruhi_tui.store import SCHEMA_VERSION, Store, StoreError, upgrade
from haruhi_tui.store.schema import UPGRADES, _v5_roleplay

ROLEPLAY_VERSION = UPGRADES.index(_v5_roleplay) + 1


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "sessions.db"


def _old_database(path, version: int) -> None:
    """A database as the previous version left it: a chat with a branch, a pin, a summary and settings."""
    old = sqlite3.connect(path, isolation_level=None)
    assert upgrade(old, target=version) == list(range(1, version + 1))
    now = time.time()
    old.execute("INSERT INTO chats (id, title, character, character_name, settings, created_at, updated_at, summary) "
                "VALUES (1, 'old chat', 'haruhi', '春日', '{\"user_name\": \"阿虚\"}', ?, ?, '他们在社团教室')",
                (now, now))
    old.execute("INSERT INTO messages (id, chat_id, parent_id, role, content, created_at, updated_at) "
                "VALUES (1, 1, NULL, 'user', '你好', ?, ?)", (now, now))
    old.execute("INSERT INTO messages (id, chat_id, parent_id, role, content, created_at, updated_at) "
                "VALUES (2, 1, 1, 'assistant', '哼', ?, ?)", (now, now))
    old.execute("INSERT INTO pins (chat_id, text, created_at, updated_at) VALUES (1, '阿虚怕青蛙', ?, ?)", (now, now))
    old.execute("UPDATE chats SET leaf_id = 2 WHERE id = 1")
    old.close()


def test_the_previous_version_upgrades_in_place_and_keeps_everything(db_path):
    _old_database(db_path, ROLEPLAY_VERSION - 1)
    store = Store(db_path)
    assert store.version == SCHEMA_VERSION >= ROLEPLAY_VERSION
    chat = store.chat(1)
    assert (chat.title, chat.leaf_id, chat.summary) == ("old chat", 2, "他们在社团教室")
    assert chat.settings == {"user_name": "阿虚"}
    assert (chat.persona_id, chat.authors_note, chat.note_depth) == (None, "", 4)
    assert [m.content for m in store.branch(1)] == ["你好", "哼"] and [p.text for p in store.pins(1)] == ["阿虚怕青蛙"]
    assert store.personas() == [] and store.lorebooks() == [] and store.chat_lorebooks(1) == []

    persona = store.add_persona("  Alice  ", "转学生")
    book = store.add_lorebook("春日的世界", '{"entries": {}}', "/tmp/world.json")
    store.update_chat(1, persona_id=persona.id, authors_note="[语气：兴奋]", note_depth=2)
    attached = store.attach_lorebook(1, lorebook_id=book.id)
    by_path = store.attach_lorebook(1, path="/data/lore.json")
    store.close()

    reopened = Store(db_path)
    chat = reopened.chat(1)
    assert (chat.persona_id, chat.authors_note, chat.note_depth) == (persona.id, "[语气：兴奋]", 2)
    assert reopened.persona(persona.id).name == "Alice"
    assert [(a.id, a.lorebook_id, a.path, a.name) for a in reopened.chat_lorebooks(1)] == [
        (attached.id, book.id, "", "春日的世界"), (by_path.id, None, "/data/lore.json", "lore.json")]
    assert reopened.lorebook(book.id).data == '{"entries": {}}'


def test_a_failed_upgrade_leaves_the_previous_version_intact(db_path):
    _old_database(db_path, ROLEPLAY_VERSION - 1)
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("CREATE TABLE lorebooks (id INTEGER PRIMARY KEY)")  # a clash makes the step fail midway
    with pytest.raises(sqlite3.OperationalError):
        upgrade(raw)
    assert "personas" not in {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "persona_id" not in {r[1] for r in raw.execute("PRAGMA table_info(chats)")}
    assert raw.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == ROLEPLAY_VERSION - 1
    raw.close()


def test_personas_lorebooks_and_attachments_follow_their_owners(db_path):
    store = Store(db_path)
    chat = store.create_chat("haruhi", "春日")
    other = store.create_chat("haruhi", "春日")
    alice = store.add_persona("Alice", "转学生")
    store.add_persona("Bob")
    assert [p.name for p in store.personas()] == ["Alice", "Bob"]
    assert store.update_persona(alice.id, description=" 留学生 ").description == "留学生"
    with pytest.raises(ValueError):
        store.add_persona("   ")
    store.update_chat(chat.id, persona_id=alice.id)
    store.delete_persona(alice.id)
    assert store.chat(chat.id).persona_id is None  # the chat falls back to the character's interlocutor
    with pytest.raises(StoreError, match="persona .* not found"):
        store.persona(alice.id)

    book = store.add_lorebook("world", "{}")
    first = store.attach_lorebook(chat.id, lorebook_id=book.id)
    assert store.attach_lorebook(chat.id, lorebook_id=book.id).id == first.id  # attaching twice is a no-op
    store.attach_lorebook(other.id, lorebook_id=book.id)
    store.attach_lorebook(chat.id, path="/x/y.json")
    with pytest.raises(ValueError):
        store.attach_lorebook(chat.id)
    store.detach_lorebook(first.id)
    assert [a.path for a in store.chat_lorebooks(chat.id)] == ["/x/y.json"]
    store.delete_lorebook(book.id)
    assert store.chat_lorebooks(other.id) == []
    store.delete_chat(chat.id)
    assert store._run("SELECT COUNT(*) FROM chat_lorebooks").fetchone()[0] == 0
