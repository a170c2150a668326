"""A new chat opens with the character's greeting: character.json greetings, or a line of theirs that opens a
classic scene; stored as the first assistant message (part of the history), alternatives as its siblings."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from haruhi_tui.core.characters import load_character
from haruhi_tui.core.engine import Engine
from haruhi_tui.core.persona import Turn
from haruhi_tui.core.prompt_format import CHAT_START, Conversation
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.services.greeting import greeting_caption, greetings_for, scene_openings
from haruhi_tui.store import MEMORY, Store


@pytest.fixture(scope="module")
def haruhi(characters_dir):
    return load_character(characters_dir / "haruhi")


@pytest.fixture
def greeter(characters_dir, tmp_path):
    """haruhi with a character.json carrying two greetings (as a card's first_mes and alternate lands)."""
    folder = tmp_path / "haruhi"
    shutil.copytree(characters_dir / "haruhi", folder)
    (folder / "character.json").write_text(json.dumps(
        {"greetings": ["{{user}}，你来得正好！{{char}}有个计划。", "哼，又迟到了，<USER>。"]}, ensure_ascii=False),
        encoding="utf-8")
    return load_character(folder)


def test_a_plain_chatharuhi_folder_opens_with_a_line_from_a_classic_scene(haruhi):
    openings = greetings_for(haruhi)
    assert 1 < len(openings) <= 3 and {g.kind for g in openings} == {"scene"}
    scenes = {s.scene_id: s for s in haruhi.scenes}
    for opening in openings:
        spoken = [line for line in scenes[opening.scene_id].lines if line.speaker]
        assert spoken[0].speaker == "春日" and spoken[0].text == opening.text  # she opens that scene
    first = scenes[openings[0].scene_id]
    assert [line.speaker for line in first.lines if line.speaker][1] == haruhi.interlocutor == "阿虚"
    assert greetings_for(haruhi) == openings  # the same every time
    assert scene_openings(haruhi, limit=1) == openings[:1]
    assert greeting_caption(openings[0].stats()) == "from a classic scene"
    assert greeting_caption(openings[0].stats(), 2, 3) == "from a classic scene · 2 of 3 (alt+←/→ for another)"
    assert greeting_caption({}) == "" and greeting_caption(None) == ""


def test_character_json_greetings_come_first_with_names_filled_in(greeter):
    openings = greetings_for(greeter, "阿虚")
    assert [g.text for g in openings] == ["阿虚，你来得正好！春日有个计划。", "哼，又迟到了，阿虚。"]
    assert {g.kind for g in openings} == {"greeting"} and greeting_caption(openings[0].stats()) == "greeting"


def test_the_greeting_is_the_first_message_and_its_alternatives_switch_like_replies(greeter):
    store = Store(MEMORY)
    session = ChatSession.start(store, greeter)
    [greeting] = session.messages
    assert greeting.role == "assistant" and greeting.parent_id is None
    assert greeting.content == f"{session.settings.user_name}，你来得正好！春日有个计划。"
    assert greeting.stats == {"greeting": "greeting"}
    assert store.branch(session.chat.id) == [greeting]  # saved, and the chat's leaf
    assert session.alternatives(greeting.id) == (1, 2)
    other = session.switch_sibling(greeting.id, 1)
    assert other is not None and session.messages[0].content.startswith("哼，又迟到了")
    with pytest.raises(ValueError, match="nothing to regenerate"):
        session.regenerate(None)  # only the greeting: nothing was asked yet, and nothing is lost
    assert [m.id for m in session.messages] == [other.id]
    assert ChatSession.start(store, greeter, greet=False).messages == []


def test_the_greeting_is_in_the_history_the_model_sees(engine, haruhi):
    session = ChatSession.start(Store(MEMORY), haruhi)
    greeting = session.messages[0]
    session.add_user_message("你在说什么？")
    context = session.build_context(engine)
    assert context.prompt.turns[0] == Turn("assistant", greeting.content, "春日")
    assert f"春日:「{greeting.content}」\n{session.settings.user_name}:「你在说什么？」" in context.text


STRICT_TEMPLATE = (  # Gemma's rule: after the system text, turns alternate and the user speaks first
    "{%- if messages[0]['role'] == 'system' -%}{%- set first = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set turns = messages[1:] -%}{%- else -%}{%- set first = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "<start_of_turn>{{ m['role'] }}\n{{ (first if loop.first else '') + m['content'] }}<end_of_turn>\n"
    "{%- endfor -%}<start_of_turn>model\n")


def test_a_strict_chat_template_gets_a_user_line_before_the_greeting(engine):
    strict = Engine(engine.llama, dataclasses.replace(engine.info, chat_template=STRICT_TEMPLATE),
                    n_ctx=engine.n_ctx, style="chat")
    turns = (Turn("assistant", "喂，阿虚！", "春日"), Turn("user", "干嘛？", "阿虚"))
    opened = Conversation("你是春日。", turns, "春日")
    text = strict.render(opened)
    assert text.index(CHAT_START) < text.index("喂，阿虚！") < text.index("干嘛？")
    usual = Conversation("你是春日。", (Turn("user", "干嘛？", "阿虚"),), "春日")
    assert CHAT_START not in strict.render(usual)
