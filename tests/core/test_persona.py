from haruhi_tui.core.characters import load_character
from haruhi_tui.core.persona import SCENES_HEADER, PersonaBuilder, PromptBudget, Turn, estimate_tokens
from haruhi_tui.core.prompt_format import Conversation, render_text, reply_text, to_messages


def _haruhi(characters_dir, **budget):
    return PersonaBuilder(load_character(characters_dir / "haruhi"), PromptBudget(**budget))


def test_layout_stable_first_and_blocks_counted(characters_dir):
    b = _haruhi(characters_dir)
    history = [Turn("user", "今天社团活动做什么？", "阿虚"), Turn("assistant", "去找外星人！", "春日")]
    prompt = b.build(history, Turn("user", "棒球比赛的事情怎么办？", "阿虚"), pins=["阿虚讨厌早起"],
                     summary="他们约好周六集合。")
    kinds = [blk.kind for blk in prompt.blocks]
    assert kinds == ["role", "pins", "summary", "scenes", "history", "message"]  # scenes change most: last
    assert prompt.system.startswith(b.character.role_prompt[:20])
    assert (prompt.system.index("Facts to remember:") < prompt.system.index("Earlier in this conversation:")
            < prompt.system.index("Classic scenes:"))
    assert [t.text for t in prompt.turns] == ["今天社团活动做什么？", "去找外星人！", "棒球比赛的事情怎么办？"]
    assert all(blk.tokens == estimate_tokens(blk.text) for blk in prompt.blocks)
    assert prompt.scene_ids and all(s.startswith("haruhi/") for s in prompt.scene_ids)


def test_scenes_are_relevant_within_budget_and_exclude_own(characters_dir):
    b = _haruhi(characters_dir, scenes=600, max_scenes=3)
    prompt = b.build([], Turn("user", "棒球 比赛 打击 顺序", "阿虚"))
    assert 1 <= len(prompt.scene_ids) <= 3
    scenes_block = next(blk for blk in prompt.blocks if blk.kind == "scenes")
    assert scenes_block.tokens <= 600 + estimate_tokens("Classic scenes:\n") + 10
    assert "棒球" in scenes_block.text
    again = b.build([], Turn("user", "棒球 比赛 打击 顺序", "阿虚"), exclude_scene_ids=prompt.scene_ids[:1])
    assert prompt.scene_ids[0] not in again.scene_ids


def test_sticky_scenes_keep_the_prefix_until_the_topic_changes(characters_dir):
    b = _haruhi(characters_dir)
    first = b.build([], Turn("user", "棒球比赛", "阿虚"))
    same_topic = b.build([], Turn("user", "棒球比赛我们一定能赢吗", "阿虚"), sticky_scene_ids=first.scene_ids)
    assert same_topic.scene_ids == first.scene_ids
    assert same_topic.system == first.system  # a stable prefix llama.cpp can reuse
    new_topic = b.build([], Turn("user", "电脑研究社的电脑", "阿虚"), sticky_scene_ids=first.scene_ids)
    assert new_topic.scene_ids != first.scene_ids


def test_a_change_of_topic_keeps_the_scenes_that_stay_in_their_places(characters_dir):
    """Scenes that stay come first, in the order llama.cpp last evaluated them; new ones follow, best first.
    So a prompt shares its cached prefix up to the first scene that left."""
    b = _haruhi(characters_dir)
    fresh = b.select_scenes("棒球比赛 电脑研究社")
    ids = [s.scene_id for s in fresh]
    assert len(ids) >= 3
    # the cache holds the same scenes in another order, plus one that is not chosen now
    cached = [ids[2], "haruhi/not-chosen", ids[0]]
    again = [s.scene_id for s in b.select_scenes("棒球比赛 电脑研究社", scene_order=cached)]
    assert sorted(again) == sorted(ids)  # the same scenes: relevance is unchanged
    assert again[:2] == [ids[2], ids[0]] and again[2:] == [i for i in ids if i not in cached]
    # sticky scenes that stay relevant keep the order they were evaluated in
    sticky = [ids[1], ids[0]]
    kept = b.select_scenes("棒球比赛", sticky_ids=sticky)
    assert [s.scene_id for s in kept] == sticky


def test_held_scenes_keep_the_system_block_and_the_new_ones_are_told_beside_the_line(characters_dir):
    """A change of topic at the line's last keystrokes: the system block keeps the scenes llama.cpp holds (so the
    history after it stays cached), the newly chosen scenes go before the line, and every chosen scene is in."""
    b = _haruhi(characters_dir)
    history = [Turn("user", "棒球比赛我们一定能赢吗", "阿虚"), Turn("assistant", "当然能赢！", "春日")]
    before = b.build(history[:1], None, query="棒球比赛")
    held = before.system_scene_ids
    line = Turn("user", "电脑研究社的电脑", "阿虚")
    plain = b.build(history, line, sticky_scene_ids=held)
    assert set(plain.scene_ids).isdisjoint(held) and plain.system_scene_ids == plain.scene_ids
    told = b.build(history, line, sticky_scene_ids=held, held_scene_ids=held)
    assert told.scene_ids == plain.scene_ids  # the same choice: relevance is unchanged
    assert told.system_scene_ids == held and told.system.startswith(before.system.split(SCENES_HEADER)[0])
    assert before.system.split(SCENES_HEADER)[1] in told.system  # the held scenes' text, as llama.cpp has it
    assert told.turns[:-1] == plain.turns[:-1]  # the history is word for word the same
    last = told.turns[-1]
    assert last.role == "user" and last.text.startswith(SCENES_HEADER) and last.text.endswith(line.as_line())
    for scene in b.select_scenes("电脑研究社的电脑", sticky_ids=held):
        assert scene.text().splitlines()[0] in last.text and scene.text().splitlines()[0] not in told.system
    assert [blk.title for blk in told.blocks if blk.kind == "scenes"] == [
        f"Classic scenes ({len(held)})", f"Classic scenes beside the message ({len(told.scene_ids)})"]


def test_a_draft_names_a_topic_only_with_two_real_words():
    from haruhi_tui.core.persona import names_a_topic

    assert not names_a_topic("我觉")  # one character of a word to come: matches scenes by chance
    assert not names_a_topic("我觉得你")
    assert not names_a_topic("最后")
    assert names_a_topic("你为什么总是")
    assert names_a_topic("baseball game")


def test_history_budget_drops_oldest_and_reports_it(characters_dir):
    b = _haruhi(characters_dir, history=60)
    history = []
    for i in range(20):
        history += [Turn("user", f"第{i}个问题是什么", "阿虚"), Turn("assistant", f"第{i}个回答", "春日")]
    prompt = b.build(history, Turn("user", "最后", "阿虚"))
    hist = next(blk for blk in prompt.blocks if blk.kind == "history")
    assert prompt.dropped_turns > 0 and "left out" in hist.cut
    assert prompt.turns[0].role == "user"
    assert prompt.turns[-2].text == "第19个回答"


def test_role_prompt_cut_is_reported(characters_dir):
    b = _haruhi(characters_dir, role=30)
    prompt = b.build([], Turn("user", "你好", "阿虚"))
    role = prompt.blocks[0]
    assert role.cut and role.tokens <= 30


def test_formats_share_conventions(characters_dir):
    b = _haruhi(characters_dir)
    prompt = b.build([Turn("user", "早", "阿虚"), Turn("assistant", "你迟到了！", "春日")],
                     Turn("user", "抱歉", "阿虚"))
    conv = Conversation.from_prompt(prompt)
    msgs = to_messages(conv)
    assert msgs[0]["role"] == "system" and msgs[-1] == {"role": "user", "content": "阿虚:「抱歉」"}
    assert msgs[2] == {"role": "assistant", "content": "你迟到了！"}
    script = render_text(conv, "script", add_generation_prompt=True)
    assert script.endswith("阿虚:「抱歉」\n春日:「") and "春日:「你迟到了！」\n" in script
    harmony_text = render_text(conv, "harmony", add_generation_prompt=True)
    assert harmony_text.endswith("<|start|>user<|message|>阿虚:「抱歉」<|end|><|start|>assistant")
    assert reply_text("才不是呢」\n阿虚:「…", "script") == "才不是呢"


def test_detect_style():
    from haruhi_tui.core.prompt_format import detect_style

    assert detect_style("gpt-oss", None) == "harmony"
    assert detect_style("gpt_oss", "{{ messages }}") == "harmony"
    assert detect_style("llama", "{% for m in messages %}<|channel|>{% endfor %}") == "harmony"
    assert detect_style("qwen2", "{% for m in messages %}{{ m.content }}{% endfor %}") == "chat"
    assert detect_style("gemma3", None) == "script"
    assert detect_style("gemma3", "  ") == "script"
