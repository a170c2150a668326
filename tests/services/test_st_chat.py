"""SillyTavern chat JSONL into the sessions store and back: swipes are sibling messages, the selected swipe
carries the conversation, reasoning is the message's analysis; the round trip gives back the same file."""

from __future__ import annotations

import json

import pytest

from haruhi_tui.core.cards import import_card
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services.st_chat import export_st_chat, import_st_chat, st_chat_lines, st_timestamp
from haruhi_tui.store import Store

HEADER = {"user_name": "Kit", "character_name": "Seraphina", "create_date": "2025-03-14@21h05m33s",
          "chat_metadata": {"integrity": "5b0f3c1e-8a57-4c43-9a55-0d3f2b8c7e11", "note_prompt": "", "note_interval": 1,
                            "note_position": 1, "note_depth": 4, "note_role": 0, "timedWorldInfo": {"sticky": {},
                                                                                                   "cooldown": {}},
                            "tainted": True, "lastInContextMessageId": 6}}


def _swipe_info(date: str, reasoning: str = "", **extra) -> dict:
    info_extra = {"api": "openai", "model": "deepseek-reasoner", **extra}
    if reasoning:
        info_extra["reasoning"] = reasoning
    return {"send_date": date, "gen_started": f"{date}-started", "gen_finished": f"{date}-finished",
            "extra": info_extra}


MESSAGES = [
    {"name": "Seraphina", "is_user": False, "is_system": False, "send_date": "March 14, 2025 9:05pm",
     "mes": "*The glade glows.* You're awake, Kit.", "extra": {},
     "swipe_id": 1, "swipes": ["*You wake in a glade.* Rest now.", "*The glade glows.* You're awake, Kit."],
     "swipe_info": [{"send_date": "March 14, 2025 9:05pm", "extra": {}}, {"send_date": "March 14, 2025 9:05pm",
                                                                        "extra": {}}]},
    {"name": "Kit", "is_user": True, "is_system": False, "send_date": "March 14, 2025 9:06pm",
     "mes": "Where am I? 这是哪里？", "extra": {"isSmallSys": False}, "force_avatar": "User Avatars/kit.png"},
    {"name": "Seraphina", "is_user": False, "is_system": False, "send_date": "March 14, 2025 9:06pm",
     "mes": "In Eldoria\u2028my forest.", "gen_started": "2025-03-14T21:06:10.000Z",
     "gen_finished": "2025-03-14T21:06:14.000Z",
     "extra": {"api": "openai", "model": "deepseek-reasoner", "reasoning": "Kit is confused; be gentle.",
               "reasoning_duration": 2100, "token_count": 12},
     "swipe_id": 2,
     "swipes": ["A forest.", "Somewhere safe.", "In Eldoria\u2028my forest."],
     "swipe_info": [_swipe_info("March 14, 2025 9:06pm", "Short answer."),
                    _swipe_info("March 14, 2025 9:06pm"),
                    _swipe_info("March 14, 2025 9:06pm", "Kit is confused; be gentle.", reasoning_duration=2100)]},
    {"name": "Kit", "is_user": True, "is_system": False, "send_date": "March 14, 2025 9:07pm",
     "mes": "Thank you.", "extra": {}},
    {"name": "System", "is_user": False, "is_system": False, "send_date": "March 14, 2025 9:07pm",
     "mes": "Night falls over the glade.", "extra": {"type": "narrator"}, "force_avatar": "img/five.png"},
    {"name": "Seraphina", "is_user": False, "is_system": True, "send_date": "March 14, 2025 9:08pm",
     "mes": "(hidden) She hums.", "extra": {"api": "openai", "model": "deepseek-reasoner"}, "swipe_id": 0,
     "swipes": ["(hidden) She hums."], "swipe_info": [_swipe_info("March 14, 2025 9:08pm")]},
    {"name": "Seraphina", "is_user": False, "is_system": False, "send_date": "March 14, 2025 9:08pm",
     "mes": "Sleep, little one.", "extra": {"api": "openai", "model": "deepseek-reasoner", "reasoning": "Calm."},
     "swipe_id": 0, "swipes": ["Sleep, little one.", "Dream well."],
     "swipe_info": [_swipe_info("March 14, 2025 9:08pm", "Calm."), _swipe_info("March 14, 2025 9:09pm", "Warm.")]},
]


@pytest.fixture
def seraphina(tmp_path):
    card = tmp_path / "seraphina.json"
    card.write_text(json.dumps({"spec": "chara_card_v2", "data": {
        "name": "Seraphina", "description": "Seraphina is the guardian of the Eldoria forest."}}), encoding="utf-8")
    return import_card(card, tmp_path / "chars")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "sessions.db")
    yield s
    s.close()


def _write_chat(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_import_builds_the_tree_and_export_gives_back_the_same_chat(tmp_path, seraphina, store):
    source = tmp_path / "Seraphina - 2025-03-14@21h05m33s.jsonl"
    _write_chat(source, [HEADER, *MESSAGES])
    chat = import_st_chat(store, source, [seraphina])
    assert (chat.character, chat.character_name, chat.settings["user_name"]) == ("Seraphina", "Seraphina", "Kit")

    branch = store.branch(chat.id)
    assert [m.role for m in branch] == ["assistant", "user", "assistant", "user", "system", "assistant", "assistant"]
    assert [m.content for m in branch] == [m["mes"] for m in MESSAGES]
    reply = branch[2]
    assert [s.content for s in store.siblings(reply.id)] == MESSAGES[2]["swipes"]
    assert [s.analysis for s in store.siblings(reply.id)] == ["Short answer.", "", "Kit is confused; be gentle."]
    assert reply.analysis == "Kit is confused; be gentle." and reply.model == "deepseek-reasoner"
    assert [s.content for s in store.siblings(branch[0].id)] == MESSAGES[0]["swipes"]  # greetings are swipes too
    assert store.children(store.siblings(reply.id)[0].id) == []  # only the selected swipe goes on

    out = export_st_chat(store, chat.id, tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    assert lines[0] == HEADER
    assert lines[1:] == MESSAGES  # text, order, selected swipe, reasoning, names, dates: all as they were


def test_switching_swipes_and_talking_on_shows_in_the_export(tmp_path, seraphina, store):
    source = tmp_path / "chat.jsonl"
    _write_chat(source, [HEADER, *MESSAGES[:3]])
    chat = import_st_chat(store, source, {"Seraphina": seraphina})
    first_swipe = store.siblings(store.branch(chat.id)[-1].id)[0]
    store.set_leaf(chat.id, first_swipe.id)  # what alt+left does in the app
    question = store.add_message(chat.id, first_swipe.id, "user", "A forest?")
    store.add_message(chat.id, question.id, "assistant", "Yes, mine.", analysis="Be brief.", model="gemma.gguf")

    rows = st_chat_lines(store, chat.id)
    reply = rows[3]
    assert (reply["mes"], reply["swipe_id"], reply["swipes"]) == ("A forest.", 0, MESSAGES[2]["swipes"])
    assert reply["extra"]["reasoning"] == "Short answer."
    assert [i["extra"].get("reasoning", "") for i in reply["swipe_info"]] == ["Short answer.", "",
                                                                              "Kit is confused; be gentle."]
    mine, answer = rows[4], rows[5]
    assert (mine["name"], mine["is_user"], mine["mes"]) == ("Kit", True, "A forest?")
    assert (answer["name"], answer["is_user"], answer["swipes"], answer["swipe_id"]) == \
        ("Seraphina", False, ["Yes, mine."], 0)
    assert answer["extra"] == {"reasoning": "Be brief.", "model": "gemma.gguf"}
    assert answer["send_date"] == st_timestamp(store.message(store.chat(chat.id).leaf_id).created_at)
    assert answer["send_date"].split()[0] in ("January", "February", "March", "April", "May", "June", "July",
                                              "August", "September", "October", "November", "December")


def test_a_chat_started_here_exports_with_a_header(tmp_path, seraphina, store):
    chat = store.create_chat(seraphina.folder, seraphina.name, settings={"user_name": "阿虚"})
    hello = store.add_message(chat.id, None, "user", "你好")
    store.add_message(chat.id, hello.id, "assistant", "Hello.")
    header, *rows = st_chat_lines(store, chat.id)
    assert header["user_name"] == "阿虚" and header["character_name"] == "Seraphina"
    assert header["chat_metadata"] == {} and "@" in header["create_date"]
    said = [(r["name"], r["is_user"], r["mes"]) for r in rows]
    assert said == [("阿虚", True, "你好"), ("Seraphina", False, "Hello.")]


def test_the_character_is_found_by_name_or_chosen_and_a_stranger_is_refused(tmp_path, seraphina, store):
    source = tmp_path / "chat.jsonl"
    _write_chat(source, [{**HEADER, "character_name": "Nobody"}, *MESSAGES[:2]])
    assert import_st_chat(store, source, [seraphina]).character == "Seraphina"  # the messages name her
    _write_chat(source, [{**HEADER, "character_name": "Nobody"}, {**MESSAGES[1]}])
    with pytest.raises(HaruhiError, match="Nobody, who is not among your characters"):
        import_st_chat(store, source, [seraphina])
    assert import_st_chat(store, source, [seraphina], character="seraphina").character == "Seraphina"
    with pytest.raises(HaruhiError, match="Ghost is not among your characters"):
        import_st_chat(store, source, [seraphina], character="Ghost")
    assert len(store.chats()) == 2


@pytest.mark.parametrize("text, problem", [
    ("", "is empty"),
    ('{"user_name": "Kit"}\n{"mes": "hi"\n', "line 2 is not JSON"),
    ('{"user_name": "Kit"}\n[1, 2]\n', "line 2 is not a SillyTavern message"),
    ('{"user_name": "Kit"}\n{"mes": "hi", "swipes": "hi"}\n', "'swipes' must be a list"),
    ('{"chat_metadata": []}\n{"mes": "hi"}\n', "'chat_metadata'"),
])
def test_a_bad_chat_file_is_a_one_line_error_and_no_chat(tmp_path, seraphina, store, text, problem):
    source = tmp_path / "bad.jsonl"
    source.write_text(text, encoding="utf-8")
    with pytest.raises(HaruhiError, match=problem):
        import_st_chat(store, source, [seraphina])
    assert store.chats() == []


@pytest.mark.parametrize("text, problem", [
    ('{"user_name": "Kit"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", "line 2 is not usable JSON"),
])
def test_a_chat_line_nested_too_deeply_is_a_one_line_error(tmp_path, seraphina, store, text, problem):
    """RecursionError traceback before."""
    source = tmp_path / "deep.jsonl"
    source.write_text(text, encoding="utf-8")
    with pytest.raises(HaruhiError, match=problem):
        import_st_chat(store, source, [seraphina])
    assert store.chats() == []


def test_odd_field_types_in_messages_still_import(tmp_path, seraphina, store):
    """An ``extra`` that is text (AttributeError before), names and flags of other types."""
    rows = [{"user_name": 5, "character_name": "Seraphina"},
            {"name": 7, "is_user": True, "mes": "hello", "extra": "x"},
            {"name": "Seraphina", "is_user": False, "mes": "hi", "extra": "narrator", "swipe_id": "1",
             "swipes": ["hi", "hey"], "swipe_info": "x", "send_date": 5}]
    source = tmp_path / "odd.jsonl"
    _write_chat(source, rows)
    chat = import_st_chat(store, source, [seraphina])
    assert [m["mes"] for m in st_chat_lines(store, chat.id)[1:]] == ["hello", "hi"]
