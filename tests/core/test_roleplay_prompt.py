"""The persona builder with what SillyTavern users rely on: a user persona, world info, the character's depth
prompt, an author's note and post-history instructions, each a block of its own, inside its budget, and
rendered in the turn order the model sees."""

from __future__ import annotations

import json

import pytest
from card_character import ST_WORLD_INFO, make_card_character

from haruhi_tui.core.characters import load_character
from haruhi_tui.core.dataset import BuildOptions, build
from haruhi_tui.core.lorebook import load_lorebook
from haruhi_tui.core.persona import PersonaBuilder, PromptBudget, Turn, estimate_tokens, fold_notes
from haruhi_tui.core.prompt_format import Conversation, render_text, to_messages
from haruhi_tui.core.roleplay import AuthorsNote, UserPersona, substitute_macros


@pytest.fixture
def card(tmp_path):
    return load_character(make_card_character(tmp_path))


def _blocks(prompt):
    return {b.kind: b for b in prompt.blocks}


def test_a_lorebook_entry_enters_the_prompt_when_its_key_is_in_the_message(card):
    builder = PersonaBuilder(card)
    prompt = builder.build([], Turn("user", "周末还去打棒球吗？", "阿虚"))
    lore = _blocks(prompt)["lore"]
    assert "春日带SOS团参加过社区棒球大赛，还让阿虚当了四棒。" in prompt.system  # {{char}}/{{user}} resolved
    assert lore.title == "World info (1)" and lore.tokens == estimate_tokens(lore.text)
    assert lore.detail == "棒球大赛 (春日的世界): key “棒球”"
    assert prompt.system.index("Classic scenes:") < prompt.system.index("World info:")  # after the stable parts

    quiet = builder.build([], Turn("user", "今天天气不错", "阿虚"))
    assert "lore" not in _blocks(quiet) and "World info:" not in quiet.system and "棒球大赛" not in quiet.system


def test_the_system_block_goes_from_stable_to_changing_with_every_part_present(card):
    """Role, persona, pins and summary first; the scenes (they change with the topic) after them; world info
    (it changes most) last. Scenes that stay keep the order llama.cpp evaluated them in."""
    builder = PersonaBuilder(card)
    alice = UserPersona("Alice", "{{user}}是刚转来北高的留学生。")
    prompt = builder.build([], Turn("user", "周末还去打棒球吗？", "Alice"), persona=alice, pins=["Alice怕狗"],
                           summary="他们约好周六集合。")
    system_kinds = [b.kind for b in prompt.blocks if b.kind in ("role", "persona", "pins", "summary", "scenes",
                                                                 "lore")]
    assert system_kinds == ["role", "persona", "pins", "summary", "scenes", "lore"]
    heads = ["Who you are talking to", "Facts to remember:", "Earlier in this conversation:", "Classic scenes:",
             "World info:"]
    assert [prompt.system.index(h) for h in heads] == sorted(prompt.system.index(h) for h in heads)
    assert len(prompt.scene_ids) > 1
    again = builder.build([], Turn("user", "周末还去打棒球吗？", "Alice"), persona=alice,
                          sticky_scene_ids=prompt.scene_ids, scene_order=prompt.scene_ids[::-1])
    assert again.scene_ids == prompt.scene_ids[::-1]


def test_secondary_keys_case_scan_depth_and_the_budget_cut_through_the_builder(card):
    chat_book = load_lorebook(ST_WORLD_INFO)
    builder = PersonaBuilder(card)
    assert "长门有希" not in builder.build([], Turn("user", "长门在吗", "阿虚"), lorebooks=[chat_book]).system
    with_book = builder.build([], Turn("user", "长门在读什么书", "阿虚"), lorebooks=[chat_book])
    assert "长门有希是文艺部唯一的部员" in with_book.system  # the chat's book (AND ANY 书)
    assert "资讯统合思念体" in with_book.system            # and the character's own (AND ANY 书)
    assert "Kyon is what" not in builder.build([], Turn("user", "kyon!", "阿虚"), lorebooks=[chat_book]).system

    history = [Turn("user", "SOS团今天做什么", "阿虚"), Turn("assistant", "找外星人", "春日"),
               Turn("user", "又来了", "阿虚"), Turn("assistant", "少废话", "春日")]
    later = builder.build(history, Turn("user", "好吧", "阿虚"), lorebooks=[chat_book])
    assert "SOS团是春日在北高创立的社团" not in later.system  # five messages back: out of scan depth and stay

    small = PersonaBuilder(card, PromptBudget(lore=40))
    cut = small.build([], Turn("user", "SOS团的长门在读书，朝比奈学姐在泡茶", "阿虚"), lorebooks=[chat_book])
    lore = _blocks(cut)["lore"]
    assert lore.cut.startswith(f"{len(cut.lore.cut)} over the 40-token budget: ") and cut.lore.cut
    assert all(a.title in lore.cut for a in cut.lore.cut)
    assert sum(a.tokens for a in cut.lore.entries) <= 40


def test_the_persona_description_is_in_the_prompt_and_user_resolves_to_it(card):
    builder = PersonaBuilder(card)
    default = builder.build([], Turn("user", "早", "阿虚"))
    assert default.user == "阿虚" and "阿虚是春日的同班同学，爱吐槽，被拉进了SOS团。" in default.system
    assert _blocks(default)["persona"].title == "Persona: 阿虚"
    # the role prompt's macros
    assert "你正在扮演春日。" in default.system and "阿虚是春日的同班同学。" in default.system

    alice = UserPersona("Alice", "{{user}}是刚转来北高的留学生，对{{char}}很好奇。")
    prompt = builder.build([Turn("user", "你好", "Alice")], Turn("user", "我想加入棒球队", "Alice"), persona=alice)
    blocks = _blocks(prompt)
    assert prompt.user == "Alice" and "Alice是刚转来北高的留学生，对春日很好奇。" in prompt.system
    assert blocks["persona"].text.startswith("Who you are talking to: Alice")
    assert "阿虚是春日的同班同学，爱吐槽" not in prompt.system and "Alice是春日的同班同学。" in prompt.system
    assert "还让Alice当了四棒" in prompt.system  # world info's {{user}} too
    assert "只用一两句话回答Alice。" in blocks["post_history"].text
    assert prompt.system.index("Who you are talking to") < prompt.system.index("Classic scenes:")  # stable, early


def test_a_plain_chatharuhi_character_is_unchanged(characters_dir):
    builder = PersonaBuilder(load_character(characters_dir / "haruhi"))
    history = [Turn("user", "早", "阿虚"), Turn("assistant", "迟到了！", "春日")]
    prompt = builder.build(history, Turn("user", "抱歉", "阿虚"))
    assert [b.kind for b in prompt.blocks] == ["role", "scenes", "history", "message"]
    assert [t.as_line() for t in prompt.turns] == ["阿虚:「早」", "春日:「迟到了！」", "阿虚:「抱歉」"]


def test_the_authors_note_sits_at_its_depth_in_the_rendered_turns(card):
    builder = PersonaBuilder(card)
    history = [Turn("user", "u1", "阿虚"), Turn("assistant", "a1", "春日"), Turn("user", "u2", "阿虚"),
               Turn("assistant", "a2", "春日")]
    prompt = builder.build(history, Turn("user", "u3", "阿虚"), authors_note=AuthorsNote("[语气：兴奋]"))
    script = render_text(Conversation.from_prompt(prompt), "script", add_generation_prompt=True)
    body = script[script.index("阿虚:「u1」"):]
    assert body == ("阿虚:「u1」\n（[语气：兴奋]）\n春日:「a1」\n"        # depth 4: before the 4th message from the end
                    "阿虚:「u2」\n（春日说话任性而有活力。）\n春日:「a2」\n"  # the character's depth prompt, depth 2
                    "阿虚:「u3」\n（只用一两句话回答阿虚。）\n春日:「")       # post-history: after the last message
    blocks = _blocks(prompt)
    assert blocks["authors_note"].title == "Author's note (depth 4)" and blocks["authors_note"].text == "[语气：兴奋]"
    assert blocks["character_note"].title == "Character's note (depth 2)"
    kinds = [b.kind for b in prompt.blocks]
    assert kinds[-2:] == ["message", "post_history"] and kinds.index("history") < kinds.index("authors_note")
    # the history is counted without the notes (they have blocks of their own)
    assert _blocks(prompt)["history"].text == "阿虚:「u1」\n春日:「a1」\n阿虚:「u2」\n春日:「a2」"

    one = builder.build(history, Turn("user", "u3", "阿虚"), authors_note=AuthorsNote("注意", depth=1))
    messages = to_messages(Conversation.from_prompt(one))
    # depth 1: before the last message
    assert messages[-1]["content"] == "（注意）\n阿虚:「u3」\n（只用一两句话回答阿虚。）"
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]


def test_world_info_at_a_depth_and_around_the_authors_note(card):
    builder = PersonaBuilder(card)
    prompt = builder.build([Turn("user", "夏天去孤岛吗", "阿虚"), Turn("assistant", "当然！", "春日")],
                           Turn("user", "几点出发", "阿虚"))
    last = to_messages(Conversation.from_prompt(prompt))[-1]["content"]
    assert last.startswith("（夏天SOS团去古泉亲戚的孤岛别墅合宿。）\n阿虚:「几点出发」")  # at_depth 1, stays
    assert "孤岛" not in prompt.system and "孤岛合宿" in _blocks(prompt)["lore"].detail


def test_notes_share_one_budget_and_show_the_cut(card):
    builder = PersonaBuilder(card, PromptBudget(notes=12))
    prompt = builder.build([], Turn("user", "hi", "阿虚"), authors_note=AuthorsNote("一二三四五六七八九十\n甲乙丙丁"))
    blocks = _blocks(prompt)
    assert blocks["character_note"].tokens + blocks["authors_note"].tokens + blocks.get("post_history").tokens <= 12
    assert blocks["authors_note"].cut.startswith("cut to")


def test_fold_notes_between_character_turns_and_before_a_greeting():
    turns = [Turn("assistant", "greeting", "春日"), Turn("assistant", "again", "春日")]
    folded = fold_notes(turns, [(2, "a"), (1, "b"), (0, "c")])
    assert [(t.role, t.as_line()) for t in folded] == [
        ("user", "（a）"), ("assistant", "春日:「greeting」"), ("user", "（b）"), ("assistant", "春日:「again」"),
        ("user", "（c）")]
    assert fold_notes(turns, []) == turns
    assert fold_notes([Turn("user", "x", "阿虚")], [(9, "deep")])[0].as_line() == "（deep）\n阿虚:「x」"


def test_macros():
    assert substitute_macros("{{User}}/<USER>/{{char}}/<BOT>/{{persona}}/{{random}}", user="A", char="B",
                             persona="P") == "A/A/B/B/P/{{random}}"


def test_the_dataset_builder_uses_the_characters_lore_persona_and_notes(tmp_path):
    make_card_character(tmp_path)
    result = build(tmp_path, BuildOptions(val_fraction=0.0))
    system = result.train[0].system
    assert "Who you are talking to: 阿虚" in system
    user_turns = [m["content"] for m in result.train[0].messages if m["role"] == "user"]
    assert any("（春日说话任性而有活力。）" in t or "（只用一两句话回答阿虚。）" in t for t in user_turns)


def test_an_entry_that_fired_stays_so_the_system_prefix_is_stable(card):
    builder = PersonaBuilder(card)
    first = builder.build([], Turn("user", "周末打棒球吗？", "阿虚"))
    history = [Turn("user", "周末打棒球吗？", "阿虚"), Turn("assistant", "当然！", "春日")]
    second = builder.build(history, Turn("user", "几点集合？", "阿虚"), sticky_scene_ids=first.scene_ids)
    assert "棒球大赛" in first.system and second.system == first.system  # llama.cpp reuses the whole system block
    assert "2 message(s) ago" in _blocks(second)["lore"].detail
    history += [Turn("user", "几点集合？", "阿虚"), Turn("assistant", "九点！", "春日")]
    third = builder.build(history, Turn("user", "好的", "阿虚"), sticky_scene_ids=first.scene_ids)
    assert "棒球大赛" not in third.system  # four messages on, the stay is over


def test_an_imported_card_with_a_lorebook_is_prompted_with_everything_resolved(tmp_path):
    """The card importer writes lorebook.json in SillyTavern's world-info shape (the card's book kept as
    originalData) and leaves {{user}}/{{char}} as macros in every file: the prompt resolves all of it."""
    from haruhi_tui.core.cards import import_card

    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": "Mira", "description": "{{char}} is a lighthouse keeper who teases {{user}}.",
        "personality": "", "scenario": "", "first_mes": "Hello {{user}}!",
        "mes_example": "<START>\n{{user}}: Any ships tonight?\n{{char}}: Only yours, {{user}}.",
        "system_prompt": "", "post_history_instructions": "Answer as {{char}} in one line.",
        "alternate_greetings": [], "tags": [], "creator": "", "character_version": "", "creator_notes": "",
        "extensions": {"depth_prompt": {"prompt": "{{char}} hums sea shanties.", "depth": 3, "role": "system"}},
        "character_book": {"name": "Coast", "scan_depth": 3, "token_budget": 300, "recursive_scanning": False,
                           "extensions": {}, "entries": [
                               {"keys": ["/storm(s)?/i"], "content": "{{char}} fears storms since 1999.",
                                "enabled": True, "insertion_order": 100, "id": 7, "comment": "storms",
                                "position": "after_char", "extensions": {}},
                               {"keys": ["beam"], "content": "The lamp's beam turns every 9 seconds.",
                                "enabled": True, "insertion_order": 50, "use_regex": False, "id": 8,
                                "selective": True, "secondary_keys": ["night"], "extensions": {"selectiveLogic": 2},
                                "position": "before_char"}]}}}
    path = tmp_path / "mira.json"
    path.write_text(json.dumps(card), encoding="utf-8")
    character = import_card(path, tmp_path / "characters")
    assert character.lorebook is not None and character.lorebook.name == "Coast"
    assert character.lorebook.scan_depth == 3 and character.lorebook.token_budget == 300  # from originalData

    builder = PersonaBuilder(character)
    persona = UserPersona("Sam")
    prompt = builder.build([], Turn("user", "A STORM is coming, and the beam is out", "Sam"), persona=persona)
    assert "Mira is a lighthouse keeper who teases Sam." in prompt.system and "{{" not in prompt.system
    assert "Sam:「Any ships tonight?」" in prompt.system  # the card's example dialogue, as a classic scene
    assert "Mira fears storms since 1999." in prompt.system and "The lamp's beam turns" in prompt.system
    at_night = builder.build([], Turn("user", "the beam at night", "Sam"), persona=persona)
    assert "The lamp's beam turns" not in at_night.system  # NOT ANY of "night"
    last = to_messages(Conversation.from_prompt(prompt))[-1]["content"]
    assert last == ("（Mira hums sea shanties.）\nSam:「A STORM is coming, and the beam is out」\n"
                    "（Answer as Mira in one line.）")
