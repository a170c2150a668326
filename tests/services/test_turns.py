"""SillyTavern's ways to move a chat on, without the UI, on the real Gemma and SQLite: continue the last reply,
impersonate (the model drafts the user's line), delete a message and what follows, per-chat sampling, and a
summary written by hand always reaching the prompt."""

from __future__ import annotations

import pytest

from haruhi_tui.core.characters import load_character
from haruhi_tui.core.engine import Sampling
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.store import Store

GREEDY = Sampling(temperature=0.0, max_tokens=8, repeat_penalty=1.0)


@pytest.fixture
def session(characters_dir, tmp_path):
    return ChatSession.start(Store(tmp_path / "s.db"), load_character(characters_dir / "haruhi"), greet=False)


def _said(session: ChatSession, *lines: str) -> None:
    """User and character lines straight into the store (no generation)."""
    for i, line in enumerate(lines):
        if i % 2 == 0:
            session.add_user_message(line)
        else:
            session.messages.append(session._insert(session.leaf, "assistant", line))


@pytest.mark.slow
def test_continue_extends_the_last_reply_in_place(engine, session):
    session.add_user_message("给我讲讲SOS团的故事吧")
    cut = session.reply(engine, sampling=GREEDY)  # cut short by the length limit
    before, count = cut.content, len(session.store.messages(session.chat.id))
    assert engine.last_stats.stop_reason == "length" and before
    longer = session.continue_reply(engine, sampling=GREEDY)
    assert longer.id == cut.id and longer.content.startswith(before) and len(longer.content) > len(before)
    saved = session.store.message(cut.id)
    assert saved.content == longer.content and saved.status == "complete"
    assert len(session.store.messages(session.chat.id)) == count  # the same message, nothing new
    with pytest.raises(ValueError, match="nothing to continue"):
        session.add_user_message("然后呢？")
        session.continue_reply(engine, sampling=GREEDY)


@pytest.mark.slow
def test_impersonate_drafts_the_users_line_and_stores_nothing(engine, session):
    _said(session, "你好", "哼，你终于来了！今天SOS团要去找外星人。")
    before = len(session.store.messages(session.chat.id))
    line = session.impersonate(engine, sampling=Sampling(temperature=0.0, max_tokens=24, repeat_penalty=1.0))
    assert line and "\n" not in line and not line.startswith(("阿虚:", "「")) and "」" not in line
    assert len(session.store.messages(session.chat.id)) == before and session.leaf.role == "assistant"


def test_delete_a_message_takes_what_follows_and_shows_its_other_version(engine, session):
    _said(session, "你好", "哼！", "去车站吧", "好，九点集合！")
    first_reply = session.messages[1]
    other = session.store.add_message(session.chat.id, first_reply.parent_id, "assistant", "另一个回答")
    session.switch_to(session.store.latest_leaf(first_reply.id))
    assert [m.content for m in session.messages] == ["你好", "哼！", "去车站吧", "好，九点集合！"]

    session.delete_message(session.messages[2].id)  # your second line and the reply to it
    assert [m.content for m in session.messages] == ["你好", "哼！"]
    assert session.store.chat(session.chat.id).leaf_id == first_reply.id
    session.delete_message(first_reply.id)  # a reply with another version: that one shows
    assert [m.content for m in session.messages] == ["你好", "另一个回答"] and session.leaf.id == other.id
    assert [m.content for m in session.store.messages(session.chat.id)] == ["你好", "另一个回答"]
    session.delete_message(session.messages[0].id)
    assert session.messages == [] and session.store.messages(session.chat.id) == []
    with pytest.raises(ValueError):
        session.delete_message(other.id)  # not on the branch shown (gone)


def test_sampling_settings_are_checked_stored_and_used(engine, session):
    session.set_sampling(temperature=0.0, max_tokens=16)
    reopened = ChatSession(session.store, session.character, session.store.chat(session.chat.id))
    assert (reopened.settings.temperature, reopened.settings.max_tokens) == (0.0, 16)
    assert reopened.settings.sampling().max_tokens == 16
    with pytest.raises(ValueError, match="temperature"):
        session.set_sampling(temperature=3)
    with pytest.raises(ValueError, match="reply length"):
        session.set_sampling(max_tokens=5)
    assert session.settings.temperature == 0.0


def test_a_summary_written_by_hand_is_in_every_prompt_a_models_only_when_turns_are_left_out(engine, session):
    _said(session, "你好", "哼！")
    session.set_summary("阿虚答应了周六去车站。")
    session.add_user_message("今天做什么？")
    ctx = session.build_context(engine)
    assert "summary" in [b.kind for b in ctx.prompt.blocks] and "阿虚答应了周六去车站。" in ctx.text
    session.store.set_summary(session.chat.id, "模型写的摘要。", session.messages[1].id)
    session.chat = session.store.chat(session.chat.id)
    assert "模型写的摘要" not in session.build_context(engine).text  # nothing left out yet: not needed
