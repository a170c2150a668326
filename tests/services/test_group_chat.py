"""Group scenes without a model: who answers (in turn, by mention, @Name, picked), each prompt built as its
speaker with everybody else's lines as script lines, group greetings, resuming, exports and SillyTavern group
chats. Real characters (the real 春日 and two card-style friends), a real SQLite store; replies are written
into the store the way an import writes them."""

from __future__ import annotations

import json

import pytest
from group_characters import KOIZUMI_PROMPT, NAGATO_GROUP_GREETING, NAGATO_PROMPT, make_group_characters

from haruhi_tui.core.characters import load_characters
from haruhi_tui.core.engine import Sampling
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.sharegpt import load_sharegpt
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.services.export import export_session, parse_jsonl, parse_markdown
from haruhi_tui.services.group_chat import GroupSession, addressed, mentioned, resume_chat, script_turns
from haruhi_tui.services.st_chat import export_st_chat, import_st_chat
from haruhi_tui.store import Store, StoreError


@pytest.fixture(scope="module")
def cast(tmp_path_factory, characters_dir):
    folder = make_group_characters(tmp_path_factory.mktemp("group"), characters_dir)
    return {c.folder: c for c in load_characters(folder)}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "sessions.db")
    yield s
    s.close()


def _say(session: GroupSession, who: str, text: str) -> None:
    """A character's reply as the chat would have stored it."""
    session.messages.append(session._insert(session.leaf, "assistant", text, character=who))


def test_a_group_opens_with_its_greeting_and_speakers_take_turns(store, cast):
    session = GroupSession.start_group(store, [cast["haruhi"], cast["nagato"], cast["koizumi"]])
    assert [m.name for m in session.members] == ["春日", "长门", "古泉"]
    assert [(m.role, m.character, m.content) for m in session.messages] == [
        ("assistant", "nagato", NAGATO_GROUP_GREETING)]  # 长门's group greeting, though 春日 is first
    assert store.chat_members(session.chat.id)[0].character == "haruhi"
    assert session.next_speaker().name == "古泉"  # in turn: after 长门, who spoke last
    session.add_user_message("大家好")
    assert session.speaker.name == "古泉"
    _say(session, "koizumi", "日安。")
    assert session.next_speaker().name == "春日"  # the turn wraps round to the first member
    _say(session, "haruhi", "好了好了，开会！")
    assert session.next_speaker().name == "长门"


def test_a_named_character_answers_and_at_name_and_a_pick_decide_first(store, cast):
    session = GroupSession.start_group(store, [cast["haruhi"], cast["nagato"], cast["koizumi"]])
    session.add_user_message("古泉和长门，你们谁先说？")
    assert session.next_speaker().name == "古泉"  # the first named, by where the name is in the line
    session.add_user_message("长门有希，你怎么看？")  # the display name counts too
    assert session.next_speaker().name == "长门"
    assert session.choose("haruhi").name == "春日"
    session.add_user_message("长门呢？")
    assert session.next_speaker().name == "春日"  # picked (ctrl+g) beats a mention…
    session.add_user_message("@古泉 你说")
    assert session.next_speaker().name == "古泉"  # …and @Name beats the pick
    assert store.chat(session.chat.id).settings["next_speaker"] == "haruhi"  # the pick is kept with the chat
    assert session.cycle_choice().name == "长门" and session.cycle_choice().name == "古泉"
    assert session.cycle_choice() is None and session.chosen is None  # round to automatic
    _say(session, "koizumi", "长门同学一定知道。")  # a character naming another hands over the word…
    assert session.next_speaker().name == "长门"
    _say(session, "nagato", "古泉说得不对。")  # …but not to themselves
    assert session.next_speaker().name == "古泉"


def test_mentions_are_whole_latin_words_and_cjk_inside_sentences(cast):
    members = list(cast.values())
    assert [m.name for m in mentioned("我觉得长门你说得对，春日呢", members)] == ["长门", "春日"]
    assert mentioned("Haruhi is here", members)[0].name == "春日"  # the folder name, any case, a whole word
    assert mentioned("haruhiism", members) == []
    assert addressed("@nagato 看书吗", members).name == "长门" and addressed("长门看书吗", members) is None


def test_each_reply_is_prompted_as_its_speaker_with_the_others_as_script_lines(store, cast):
    session = GroupSession.start_group(store, [cast["haruhi"], cast["nagato"], cast["koizumi"]])
    session.add_user_message("大家好")
    _say(session, "koizumi", "日安，两位。")
    session.add_user_message("长门，你在读什么？")
    session.speaker = session.next_speaker()
    prompt = session.build_prompt()
    assert prompt.character == "长门" and prompt.system.startswith(NAGATO_PROMPT.replace("{{user}}", "阿虚"))
    assert [(t.role, t.speaker) for t in prompt.turns] == [("assistant", "长门"), ("user", "")]
    assert prompt.turns[-1].text == "阿虚:「大家好」\n古泉:「日安，两位。」\n阿虚:「长门，你在读什么？」"
    session.speaker = cast["koizumi"]  # the same conversation seen by 古泉: his own line is his
    prompt = session.build_prompt()
    assert prompt.system.startswith(KOIZUMI_PROMPT)
    assert [(t.role, t.as_line() if t.role == "user" else t.text) for t in prompt.turns] == [
        ("user", f"长门:「{NAGATO_GROUP_GREETING}」\n阿虚:「大家好」"), ("assistant", "日安，两位。"),
        ("user", "阿虚:「长门，你在读什么？」")]
    assert script_turns(prompt.turns) == prompt.turns  # already alternating
    _say(session, "koizumi", "书名是《白鲸》。")
    _say(session, "koizumi", "我猜的。")  # picked to go on after himself: his two lines are one turn of his
    assert [(t.role, t.text) for t in session.build_prompt().turns][-1] == ("assistant", "书名是《白鲸》。\n我猜的。")


def test_greetings_fall_back_to_the_first_members_and_none_is_fine(store, cast):
    session = GroupSession.start_group(store, [cast["koizumi"], cast["haruhi"]])
    assert [(m.character, m.content) for m in session.messages] == [("koizumi", "哎呀，阿虚，你来得正好。")]
    plain = GroupSession.start_group(store, [cast["haruhi"], cast["koizumi"]], greeting=False)
    assert plain.messages == [] and not plain.can_reply()
    with pytest.raises(HaruhiError, match="two or more"):
        GroupSession.start_group(store, [cast["haruhi"], cast["haruhi"]])


def test_a_group_chat_resumes_as_one_and_a_missing_member_is_named(store, cast):
    session = GroupSession.start_group(store, [cast["haruhi"], cast["nagato"]])
    session.add_user_message("长门？")
    resumed = resume_chat(store, session.chat.id, cast)
    assert isinstance(resumed, GroupSession) and resumed.speaker.name == "长门"
    assert [m.character for m in resumed.messages] == ["nagato", ""]
    with pytest.raises(StoreError, match="group chat"):
        ChatSession.resume(store, session.chat.id, cast)
    with pytest.raises(StoreError, match="长门, who is not in the characters folder"):
        resume_chat(store, session.chat.id, {"haruhi": cast["haruhi"]})
    single = ChatSession.start(store, cast["haruhi"])
    assert type(resume_chat(store, single.chat.id, cast)) is ChatSession


def test_a_group_chat_exports_with_its_speakers(store, cast, tmp_path):
    session = GroupSession.start_group(store, [cast["haruhi"], cast["nagato"], cast["koizumi"]])
    session.add_user_message("大家好")
    _say(session, "koizumi", "日安。")
    _say(session, "haruhi", "古泉，别打岔！")
    session.add_user_message("长门呢？")
    _say(session, "nagato", "……在听。")

    md = export_session(session, tmp_path / "g.md").read_text(encoding="utf-8")
    assert "*春日 · 长门 · 古泉*" in md
    assert [(t.role, t.speaker) for t in parse_markdown(md)] == [
        ("assistant", "长门"), ("user", "阿虚"), ("assistant", "古泉"), ("assistant", "春日"), ("user", "阿虚"),
        ("assistant", "长门")]
    rows = [json.loads(line) for line in export_session(session, tmp_path / "g.jsonl").read_text().splitlines()]
    assert [r["character"] for r in rows if r["role"] == "assistant"] == ["长门", "古泉", "春日", "长门"]
    assert [t.speaker for t in parse_jsonl((tmp_path / "g.jsonl").read_text())][:3] == ["长门", "阿虚", "古泉"]

    samples = load_sharegpt(export_session(session, tmp_path / "g.json"))
    assert [s.character for s in samples] == ["古泉", "春日", "长门"]  # one per reply that answers something
    koizumi, haruhi, nagato = samples
    assert koizumi.system.startswith(KOIZUMI_PROMPT) and koizumi.target == "日安。"
    assert haruhi.system.startswith(cast["haruhi"].role_prompt.strip()[:40]) and haruhi.target == "古泉，别打岔！"
    assert haruhi.messages[-2] == {"role": "user", "content": f"长门:「{NAGATO_GROUP_GREETING}」\n阿虚:「大家好」\n"
                                                             "古泉:「日安。」"}
    assert nagato.system.startswith(NAGATO_PROMPT.replace("{{user}}", "阿虚"))
    assert nagato.messages[1:] == [  # her own greeting answers nobody: the sample opens on what was said to her
        {"role": "user", "content": "阿虚:「大家好」\n古泉:「日安。」\n春日:「古泉，别打岔！」\n阿虚:「长门呢？」"},
        {"role": "assistant", "content": "……在听。"}]


def test_a_group_chat_goes_to_sillytavern_and_back(store, cast, tmp_path):
    session = GroupSession.start_group(store, [cast["haruhi"], cast["nagato"], cast["koizumi"]])
    session.add_user_message("大家好")
    _say(session, "koizumi", "日安。")
    first = export_st_chat(store, session.chat.id, tmp_path / "group.jsonl")
    header, *rows = [json.loads(line) for line in first.read_text(encoding="utf-8").splitlines()]
    assert (header["user_name"], header["character_name"]) == ("unused", "unused")
    assert [(r["name"], r.get("original_avatar")) for r in rows] == [
        ("长门", "nagato.png"), ("阿虚", None), ("古泉", "koizumi.png")]

    chat = import_st_chat(store, first, cast)
    assert [m.character for m in store.chat_members(chat.id)] == ["nagato", "koizumi"]  # who speaks in it
    assert [(m.role, m.character) for m in store.branch(chat.id)] == [
        ("assistant", "nagato"), ("user", ""), ("assistant", "koizumi")]
    again = export_st_chat(store, chat.id, tmp_path / "again.jsonl")
    assert export_st_chat(store, import_st_chat(store, again, cast).id, tmp_path / "third.jsonl").read_bytes() \
        == again.read_bytes()


def test_deleting_in_a_group_chat_moves_who_answers_next_and_impersonation_names_everyone(store, cast):
    session = GroupSession.start_group(store, [cast["haruhi"], cast["nagato"], cast["koizumi"]])
    session.add_user_message("大家好")
    _say(session, "koizumi", "日安。")
    session.speaker = cast["haruhi"]  # who was next after 古泉's line
    session.delete_message(session.leaf.id)
    assert [m.content for m in session.messages][-1] == "大家好"
    assert session.speaker.name == "古泉"  # in turn after 长门's greeting again, not 春日
    assert session.talking_with() == "春日, 长门, 古泉"


@pytest.mark.slow
def test_a_group_reply_is_continued_by_the_character_who_said_it(engine, store, cast):
    session = GroupSession.start_group(store, [cast["haruhi"], cast["nagato"], cast["koizumi"]])
    session.add_user_message("长门，你在读什么？")
    _say(session, "nagato", "一本书，")
    session.speaker = cast["koizumi"]  # picked next; the reply shown is still 长门's
    reply = session.continue_reply(engine, sampling=Sampling(temperature=0.0, max_tokens=8, repeat_penalty=1.0))
    assert reply.character == "nagato" and reply.content.startswith("一本书，")
    assert session.speaker.name == "长门" and session.last_context.prompt.character == "长门"
    assert session.last_context.prompt.system.startswith(NAGATO_PROMPT.replace("{{user}}", "阿虚"))


@pytest.mark.slow
def test_a_line_typed_in_a_group_is_warmed_up_as_the_member_who_will_answer_it(engine, store, cast):
    from haruhi_tui.services.warmup import warm

    session = GroupSession.start_group(store, [cast["haruhi"], cast["nagato"], cast["koizumi"]])
    assert session.speaker.name == "古泉"  # in turn after 长门's greeting
    assert warm(session, engine, "@长门 你在读什么书？") is None  # 长门's prompt, not the one built now
    line = "大家好，今天做什么？"
    warmed, _ = warm(session, engine, line)
    assert warmed.prompt.character == "古泉" and warmed.prompt.system.startswith(KOIZUMI_PROMPT)
    reply = session.send(engine, line, sampling=Sampling(temperature=0.0, max_tokens=8, repeat_penalty=1.0))
    stats = engine.last_stats
    assert reply.character == "koizumi" and stats.reused_tokens == stats.prompt_tokens - 1
