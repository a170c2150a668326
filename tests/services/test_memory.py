"""Long-term memory without the UI: pins in every prompt, a rolling summary written by the real Gemma
when the history outgrows its budget, edits that branch and switch back, compare as sibling replies."""

from __future__ import annotations

import pytest

from haruhi_tui.core.characters import load_character
from haruhi_tui.core.engine import Sampling
from haruhi_tui.core.persona import SUMMARY_HEADER, Turn
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.services.memory import clean_summary, summary_prompt
from haruhi_tui.store import Store

GREEDY = Sampling(temperature=0.0, max_tokens=12, repeat_penalty=1.0)



@pytest.fixture
def session(characters_dir, tmp_path):
    store = Store(tmp_path / "s.db")
    return ChatSession.start(store, load_character(characters_dir / "haruhi"), greet=False)  # test_greeting.py


def _long_chat(session: ChatSession, turns: int) -> None:
    """A chat long enough to outgrow the history budget, written straight to the store (no generation)."""
    for i in range(turns):
        user = session.add_user_message(
            f"第{i}天：我们去了车站前的咖啡店，阿虚说他今天又忘了带钱包，所以古泉请客。" * 2)
        reply = session._insert(user, "assistant", f"哼，第{i}天的活动也没有找到外星人，明天九点继续在车站集合！" * 2)
        session.messages.append(reply)


def test_pins_are_in_every_prompt_and_survive_a_reopen(engine, session):
    pin = session.add_pin("阿虚害怕青蛙")
    session.add_pin("下周六是团长的生日")
    session.add_user_message("你好")
    ctx = session.build_context(engine)
    kinds = [b.kind for b in ctx.prompt.blocks]
    assert "pins" in kinds and kinds.index("pins") < kinds.index("history" if "history" in kinds else "message")
    assert "阿虚害怕青蛙" in ctx.prompt.system and "阿虚害怕青蛙" in ctx.text
    session.edit_pin(pin.id, "阿虚害怕蛇")
    session.remove_pin(session.pins[1].id)
    reopened = ChatSession(session.store, session.character, session.store.chat(session.chat.id))
    assert [p.text for p in reopened.pins] == ["阿虚害怕蛇"]
    text = reopened.build_context(engine).text
    assert "阿虚害怕蛇" in text and "生日" not in text


@pytest.mark.slow
def test_a_long_chat_is_folded_into_a_summary_and_stays_in_budget(engine, session):
    _long_chat(session, 12)
    session.add_user_message("我们明天去哪里？")
    before = session.build_context(engine)
    assert before.prompt.dropped_turns > 0
    assert "summary" not in [b.kind for b in before.prompt.blocks]
    session.messages.pop()  # fold as the app does, after a reply

    assert session.fold_history(engine)
    summary = session.chat.summary
    assert summary and session.chat.summary_upto is not None
    assert session.store.chat(session.chat.id).summary == summary  # stored with the chat
    assert not session.fold_history(engine)  # nothing new left out: no second summary call

    session.add_user_message("我们明天去哪里？")
    after = session.build_context(engine)
    blocks = {b.kind: b for b in after.prompt.blocks}
    summary = blocks["summary"]
    assert summary.text.startswith(SUMMARY_HEADER) and summary.tokens == engine.count_tokens(summary.text)
    builder = session.builder(engine)
    assert blocks["summary"].tokens <= builder.budget.summary
    assert blocks["history"].tokens <= builder.budget.history
    assert after.prompt_tokens + session.settings.max_tokens <= engine.n_ctx

    session.set_summary("团员们每天在车站集合寻找外星人。")
    assert "每天在车站集合" in session.build_context(engine).prompt.system
    assert session.store.chat(session.chat.id).summary == "团员们每天在车站集合寻找外星人。"


@pytest.mark.slow
def test_a_summary_from_another_branch_is_not_used(engine, session):
    _long_chat(session, 12)
    first_user = session.messages[0]
    assert session.fold_history(engine)
    session.edit(first_user.id, "重新开始吧")
    assert session.summary == ""  # the summarised turns are not on this branch


def test_summary_prompts_per_style(engine):
    turns = [Turn("user", "你好", "阿虚"), Turn("assistant", "哼", "春日")]
    prompt = summary_prompt(engine, turns, "Earlier things.", "春日")
    assert engine.style == "script" and prompt.rstrip().endswith("in plain sentences:")
    assert "阿虚:「你好」" in prompt and "Earlier summary: Earlier things." in prompt
    assert clean_summary("「They met.」\n\nA: more") == "They met."


def test_edit_branches_and_switching_restores_the_old_version(engine, session):
    session.send(engine, "你好", sampling=GREEDY)
    first_reply = session.leaf
    session.send(engine, "今天去哪里？", sampling=GREEDY)
    old_branch = [m.id for m in session.messages]
    second_user = session.messages[2]

    edited = session.edit(second_user.id, "今天吃什么？")
    session.reply(engine, sampling=GREEDY)
    assert [m.content for m in session.messages[:3]] == ["你好", first_reply.content, "今天吃什么？"]
    assert session.alternatives(edited.id) == (2, 2)

    assert session.switch_sibling(edited.id, -1).id == second_user.id
    assert [m.id for m in session.messages] == old_branch  # the old branch, whole
    assert session.store.chat(session.chat.id).leaf_id == old_branch[-1]
    assert session.switch_sibling(second_user.id, -1) is None
    session.switch_sibling(second_user.id, +1)
    assert session.messages[2].content == "今天吃什么？"

    reply = session.leaf
    changed = session.edit(reply.id, "我改了这句回答。")
    assert changed.role == "assistant" and session.alternatives(changed.id) == (2, 2)


def test_compare_stores_both_replies_as_labelled_siblings(engine, session):
    session.add_user_message("你好")
    warm = Sampling(temperature=0.9, seed=3, max_tokens=12)
    replies = session.compare([(engine, GREEDY, "greedy"), (engine, warm, "warm")])
    assert [r.model for r in replies] == ["greedy", "warm"]
    assert {r.parent_id for r in replies} == {session.messages[0].id}
    assert [m.id for m in session.store.siblings(replies[0].id)] == [r.id for r in replies]
    session.switch_to(replies[0].id)
    assert session.leaf.id == replies[0].id and session.leaf.content == replies[0].content
