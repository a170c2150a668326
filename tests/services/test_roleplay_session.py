"""A chat's persona, lorebooks and author's note through ChatSession: chosen, stored, reopened, in every
prompt the session builds, and carried into the ShareGPT export that `haruhi data build --extra` merges."""

from __future__ import annotations

import json

import pytest
from card_character import ST_WORLD_INFO, make_card_character

from haruhi_tui.core.characters import load_character
from haruhi_tui.core.dataset import BuildOptions, build
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.roleplay import UserPersona
from haruhi_tui.core.sharegpt import load_sharegpt
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.services.export import export_session, session_record
from haruhi_tui.services.roleplay import import_lorebook
from haruhi_tui.store import Store


@pytest.fixture
def card(tmp_path):
    return load_character(make_card_character(tmp_path / "characters"))


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "s.db")


def _talk(session: ChatSession, *lines: str) -> None:
    """User/character lines written straight to the chat (no generation), the user's first."""
    for i, text in enumerate(lines):
        if i % 2 == 0:
            session.add_user_message(text)
        else:
            session.messages.append(session._insert(session.leaf, "assistant", text))


def _reopen(session: ChatSession) -> ChatSession:
    return ChatSession(session.store, session.character, session.store.chat(session.chat.id))


def test_the_persona_is_chosen_per_chat_stored_and_named_everywhere(store, card):
    session = ChatSession.start(store, card)
    assert session.persona.name == "阿虚" and "爱吐槽" in session.persona.description  # from character.json
    alice = store.add_persona("Alice", "{{user}}是转学生，想加入{{char}}的社团。")
    assert session.set_persona(alice.id).name == "Alice" and session.settings.user_name == "Alice"
    session.add_user_message("你好，{{char}}")
    prompt = _reopen(session).build_prompt()
    assert prompt.user == "Alice" and "Alice是转学生，想加入春日的社团。" in prompt.system
    assert "\nAlice:「你好，{{char}}」\n" in prompt.turns[-1].as_line()  # the user's own text is left as typed
    assert session.set_persona("Bob").description == "" and session.chat.persona_id is None
    assert session.set_persona("Alice").description.startswith("{{user}}是转学生")  # a stored persona by name
    assert session.set_persona(None).name == "阿虚"
    session.set_user_name("Alice")  # the app's "your name in this chat" goes through the same path
    assert _reopen(session).persona.name == "Alice" and _reopen(session).chat.persona_id == alice.id
    started = ChatSession.start(store, card)
    started.set_persona("Bob")  # what `haruhi chat --persona Bob` does
    assert started.persona.name == "Bob" and _reopen(started).settings.user_name == "Bob"


def test_a_lorebook_attached_to_the_chat_fires_on_its_key(store, card, tmp_path):
    session = ChatSession.start(store, card)
    stored = import_lorebook(store, ST_WORLD_INFO)
    attached = session.attach_lorebook(stored.id)
    assert [a.name for a in session.lore_attachments] == ["haruhi_world_info"] and attached.lorebook_id == stored.id
    session.add_user_message("今天SOS团去哪？")
    prompt = _reopen(session).build_prompt()
    assert "SOS团是春日在北高创立的社团" in prompt.system and "故事发生在西宫市的县立北高。" in prompt.system
    session.detach_lorebook(attached.id)
    assert "SOS团是春日在北高创立的社团" not in session.build_prompt().system

    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"entries": {"0": {"uid": 0, "key": ["车站"], "content": "集合地点是车站前。"}}},
                                ensure_ascii=False), encoding="utf-8")
    session.attach_lorebook(path)
    session.add_user_message("车站见")
    assert "集合地点是车站前。" in session.build_prompt().system
    path.write_text(json.dumps({"entries": {"0": {"uid": 0, "key": ["车站"], "content": "改在公园集合。"}}},
                               ensure_ascii=False), encoding="utf-8")
    assert "改在公园集合。" in session.build_prompt().system  # a file attached by path is read afresh

    errors: list[str] = []
    reopened = _reopen(session)
    reopened.on_error = errors.append
    path.write_text("{broken", encoding="utf-8")
    reopened.build_prompt()
    reopened.build_prompt()
    assert len(errors) == 1 and "mine.json is not used" in errors[0]  # reported once, the chat goes on
    with pytest.raises(HaruhiError, match="lorebook not found"):
        session.attach_lorebook(tmp_path / "missing.json")


def test_the_authors_note_is_stored_per_chat_and_sits_at_its_depth(store, card):
    session = ChatSession.start(store, card)
    session.set_authors_note("[气氛：紧张]", depth=1)
    with pytest.raises(ValueError, match="whole number"):
        session.set_authors_note("x", depth=-1)
    _talk(session, "u1", "a1", "u2")
    reopened = _reopen(session)
    assert (reopened.authors_note.text, reopened.authors_note.depth) == ("[气氛：紧张]", 1)
    last = reopened.build_prompt().turns[-1].as_line()
    assert last == "（[气氛：紧张]）\n阿虚:「u2」\n（只用一两句话回答阿虚。）"
    reopened.set_authors_note("")
    assert "authors_note" not in [b.kind for b in reopened.build_prompt().blocks]


def test_context_blocks_fit_the_engine_and_the_rendered_text_has_them(engine, store, card):
    session = ChatSession.start(store, card)
    session.attach_lorebook(ST_WORLD_INFO)
    session.set_authors_note("[语气：兴奋]")
    session.add_user_message("长门在读什么书？")
    ctx = session.build_context(engine)
    kinds = [b.kind for b in ctx.prompt.blocks]
    assert kinds[:3] == ["role", "persona", "scenes"] and {"lore", "authors_note", "post_history"} <= set(kinds)
    assert "长门有希是文艺部唯一的部员" in ctx.text and "[语气：兴奋]" in ctx.text
    assert ctx.prompt_tokens + session.settings.max_tokens <= engine.n_ctx
    budget = session.builder(engine).budget
    assert budget.lore and budget.history < 1500  # a 2048-token context: the budgets shrank to make room


def test_the_sharegpt_export_carries_the_chats_prompt_into_training(store, card, tmp_path):
    session = ChatSession.start(store, card)
    session.set_persona(store.add_persona("Alice", "{{user}}是转学生。").id)
    session.attach_lorebook(ST_WORLD_INFO)
    _talk(session, "SOS团今天做什么？", "去找外星人！", "又来了……", "少废话，跟上！")
    record = session_record(session)
    chat_prompt = session.build_prompt(branch=session.messages[:-1])
    assert record.prompt is not None and record.prompt.system == chat_prompt.system
    path = export_session(session, tmp_path / "chat.json")
    (sample,) = load_sharegpt(path)
    assert sample.system == chat_prompt.system and "Alice是转学生。" in sample.system
    assert "SOS团是春日在北高创立的社团" in sample.system
    assert sample.messages[1]["content"] == "Alice:「SOS团今天做什么？」\n（春日说话任性而有活力。）"  # depth 2
    assert sample.target == "少废话，跟上！"
    assert sample.messages[-2]["content"].endswith("（只用一两句话回答Alice。）")  # post-history, as chat sent it
    result = build(tmp_path / "characters", BuildOptions(), extra=[path])
    assert result.extra_samples == 1 and result.train[-1].system == chat_prompt.system
    md = export_session(session, tmp_path / "chat.md")
    assert "**Alice** (you): SOS团今天做什么？" in md.read_text(encoding="utf-8")


def test_an_edited_stored_persona_applies_from_the_next_prompt(store, card):
    session = ChatSession.start(store, card)
    alice = store.add_persona("Alice", "转学生")
    session.set_persona(alice.id)
    session.add_user_message("早")
    store.update_persona(alice.id, name="Alicia", description="留学生")
    prompt = session.build_prompt()
    assert prompt.user == "Alicia" and "留学生" in prompt.system and "Alicia:「早」" in prompt.turns[-1].as_line()
    store.delete_persona(alice.id)
    assert _reopen(session).persona == UserPersona("Alicia")  # the name stays, the description went with it
