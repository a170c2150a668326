"""Lorebooks: SillyTavern world info and card character_books read, and entries activated the way
SillyTavern's world-info.js activates them (keys, secondary logic, case, whole words, scan depth, budget),
with the stays that keep the prompt stable between turns."""

from __future__ import annotations

import json

import pytest
from card_character import CHARACTER_BOOK, ST_WORLD_INFO, book_entry

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.lore_scan import LoreSettings, activate
from haruhi_tui.core.lorebook import Lorebook, LoreEntry, load_lorebook, parse_lorebook
from haruhi_tui.core.persona import Turn, estimate_tokens

NO_STAY = LoreSettings(stay=0)


def _fired(book, messages, *, budget=1000, settings=NO_STAY, macros=lambda t: t):
    result = activate([book], messages, budget=budget, count_tokens=estimate_tokens, settings=settings, macros=macros)
    return [a.title for a in result.entries], result


def _chat(*lines: str) -> list[Turn]:
    """Alternating user/character turns, the user first."""
    return [Turn("user" if i % 2 == 0 else "assistant", text, "阿虚" if i % 2 == 0 else "春日")
            for i, text in enumerate(lines)]


def _book(*entries: LoreEntry, **kw) -> Lorebook:
    return Lorebook("test", tuple(entries), **kw)


def test_a_sillytavern_world_info_file_loads_with_its_fields():
    book = load_lorebook(ST_WORLD_INFO)
    assert book.name == "haruhi_world_info" and book.source == str(ST_WORLD_INFO) and len(book.entries) == 12
    by_title = {e.comment: e for e in book.entries}
    assert by_title["SOS团"].keys == ("SOS团", "SOS Brigade") and by_title["SOS团"].position == "before_char"
    assert by_title["长门有希"].logic == "and_any" and by_title["长门有希"].position == "after_char"
    assert by_title["朝比奈实玖瑠"].logic == "not_any" and by_title["古泉一树（秘密）"].logic == "and_all"
    assert by_title["棒球大赛"].logic == "not_all" and by_title["棒球大赛"].sticky == 6
    assert by_title["舞台"].constant and by_title["舞台"].order == 10
    assert not by_title["电脑研究社（停用）"].enabled
    assert by_title["Kyon"].case_sensitive is True and by_title["三味线"].match_whole_words is True
    assert by_title["春日的无聊"].position == "at_depth" and by_title["春日的无聊"].depth == 2
    assert by_title["an outlet entry"].never  # position 7 is an outlet: never part of the prompt


def test_a_card_character_book_and_a_whole_card_load():
    book = parse_lorebook(CHARACTER_BOOK, "lorebook.json")
    assert book.name == "春日的世界" and book.scan_depth == 2 and book.token_budget == 400
    first, second, third = book.entries
    assert first.keys == ("棒球",) and first.position == "after_char" and first.secondary_keys == ()
    assert second.secondary_keys == ("书", "读书") and second.order == 110
    assert third.position == "at_depth" and third.depth == 1
    card = {"spec": "chara_card_v3", "spec_version": "3.0", "data": {"name": "春日", "character_book": {
        "entries": [{"keys": ["a.b"], "content": "x", "use_regex": True, "enabled": True, "insertion_order": 5,
                     "position": "before_char"}]}}}
    v3 = parse_lorebook(card, "card.json")
    assert v3.name == "春日" and v3.entries[0].use_regex and v3.entries[0].position == "before_char"
    assert v3.entries[0].secondary_keys == ()
    world = {"entries": {"3": {"uid": 3, "key": ["a.b"], "content": "x"}},  # as the card importer writes it
             "originalData": {"name": "kept", "scan_depth": 5, "entries": [{"id": 3, "use_regex": True}]}}
    kept = parse_lorebook(world, "lorebook.json")
    assert kept.name == "kept" and kept.scan_depth == 5 and kept.entries[0].use_regex


@pytest.mark.parametrize("text, problem", [
    ("[]", "not a lorebook"),
    ('{"entries": 3}', "'entries' must be"),
    ('{"entries": {"0": {"key": [["a"]], "content": "x"}}}', "entry 0: 'key' must be a list of texts"),
    ('{"entries": [{"keys": ["a"], "content": 5}]}', "entry 0: 'content' must be text"),
    ('{"entries": {"0": {"key": ["a"], "content": "x", "order": "first"}}}', "'order' must be a number"),
    ('{"spec": "chara_card_v2", "data": {"name": "x"}}', "has no lorebook"),
    ('{"entries": ', "not valid JSON"),
])
def test_malformed_lorebooks_are_one_line_errors(tmp_path, text, problem):
    path = tmp_path / "book.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(HaruhiError, match=problem) as info:
        load_lorebook(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(HaruhiError, match="lorebook not found"):
        load_lorebook(tmp_path / "nope.json")
    (tmp_path / "gbk.json").write_bytes('{"entries": {}, "name": "春日"}'.encode("gbk"))
    with pytest.raises(HaruhiError, match="not UTF-8"):
        load_lorebook(tmp_path / "gbk.json")


def test_an_entry_fires_when_its_key_is_in_the_message_and_not_otherwise():
    book = load_lorebook(ST_WORLD_INFO)
    titles, result = _fired(book, _chat("今天SOS团有什么活动？"))
    assert "SOS团" in titles and "舞台" in titles  # the constant entry is always in
    sos = next(a for a in result.entries if a.title == "SOS团")
    assert sos.reason == "key “SOS团”"
    assert _fired(book, _chat("今天有什么活动？"))[0] == ["舞台"]
    assert "SOS团" in _fired(book, _chat("What does the sos brigade do?"))[0]  # case-insensitive by default


def test_secondary_keys_and_or_not_logic():
    book = load_lorebook(ST_WORLD_INFO)
    assert "长门有希" not in _fired(book, _chat("长门在吗？"))[0]                 # AND ANY needs 书 or 读书
    assert "长门有希" in _fired(book, _chat("长门在读什么书？"))[0]
    assert "朝比奈实玖瑠" in _fired(book, _chat("朝比奈学姐好可爱"))[0]          # NOT ANY: no 未来
    assert "朝比奈实玖瑠" not in _fired(book, _chat("朝比奈学姐来自未来吗"))[0]
    assert "古泉一树（秘密）" not in _fired(book, _chat("古泉有超能力吗"))[0]      # AND ALL needs both
    assert "古泉一树（秘密）" in _fired(book, _chat("古泉在闭锁空间用超能力"))[0]
    assert "棒球大赛" in _fired(book, _chat("棒球比赛我们输了"))[0]                 # NOT ALL: not both 输 and 败
    assert "棒球大赛" not in _fired(book, _chat("棒球比赛输了，惨败"))[0]
    reason = next(a.reason for a in _fired(book, _chat("古泉在闭锁空间用超能力"))[1].entries if "古泉" in a.title)
    assert reason == "key “古泉” and all of “超能力”, “闭锁空间”"


def test_case_sensitivity_whole_words_and_regex_keys():
    book = load_lorebook(ST_WORLD_INFO)
    assert "Kyon" in _fired(book, _chat("Kyon, wait!"))[0]
    assert "Kyon" not in _fired(book, _chat("kyon, wait!"))[0]               # this entry is case-sensitive
    assert "三味线" in _fired(book, _chat("Is that your cat?"))[0]
    assert "三味线" not in _fired(book, _chat("Let's concatenate the files"))[0]  # whole words: not inside a word
    assert "三味线" in _fired(book, _chat("三味线今天又睡了一整天"))[0]          # CJK keys still match in a sentence
    assert "自我介绍" in _fired(book, _chat("你真的在找外星人吗"))[0]              # /外星人|未来人|超能力者/
    assert "电脑研究社（停用）" not in _fired(book, _chat("电脑研究社"))[0]       # disabled
    assert "an outlet entry" not in _fired(book, _chat("outlet"))[0]


def test_scan_depth_counts_the_last_messages():
    book = _book(LoreEntry("0", ("棒球",), "棒球大赛", comment="depth 2"),
                 LoreEntry("1", ("棒球",), "深扫描", comment="depth 4", scan_depth=4))
    chat = _chat("我们去打棒球吧", "好啊", "几点集合？")
    assert _fired(book, chat)[0] == ["depth 4"]                 # 棒球 is three messages back: beyond depth 2
    assert _fired(book, chat[:2] + _chat("棒球"))[0] == ["depth 2", "depth 4"]
    assert _fired(_book(*book.entries, scan_depth=3), chat)[0] == ["depth 2", "depth 4"]  # the book's own depth


def test_the_budget_keeps_the_highest_order_first_and_shows_what_was_cut():
    long = "很长的内容" * 20  # 100 tokens (estimated: one per CJK character) + 1
    book = _book(LoreEntry("0", ("a",), long, comment="low", order=10),
                 LoreEntry("1", ("a",), long, comment="high", order=200),
                 LoreEntry("2", ("a",), "短", comment="small", order=5))
    titles, result = _fired(book, _chat("a"), budget=150)
    assert titles == ["high"]
    assert [a.title for a in result.cut] == ["low", "small"]  # SillyTavern stops at the first that does not fit
    capped = Lorebook("capped", book.entries[1:2], token_budget=50)
    other = Lorebook("other", book.entries[2:])
    result = activate([capped, other], _chat("a"), budget=1000, count_tokens=estimate_tokens, settings=NO_STAY)
    assert [a.title for a in result.entries] == ["small"]  # a lorebook's own token_budget caps only its entries
    assert [a.title for a in result.cut] == ["high"]


def test_entries_stay_a_few_messages_and_keep_insertion_order():
    book = _book(LoreEntry("0", ("棒球",), "棒球大赛", comment="baseball", order=20),
                 LoreEntry("1", ("长门",), "长门有希", comment="nagato", order=10))
    settings = LoreSettings(stay=4)
    chat = _chat("去打棒球吧", "好", "长门也来吗")
    titles, result = _fired(book, chat, settings=settings)
    assert titles == ["nagato", "baseball"]  # insertion order, not the order they fired in
    assert next(a for a in result.entries if a.title == "baseball").reason == "key “棒球”, 2 message(s) ago"
    assert _fired(book, chat, settings=NO_STAY)[0] == ["nagato"]  # 棒球 is out of the scan depth by now
    chat += [Turn("assistant", "来", "春日"), Turn("user", "几点？", "阿虚")]
    assert _fired(book, chat, settings=settings)[0] == ["nagato"]  # baseball's stay is over, nagato's is not
    chat += [Turn("assistant", "九点", "春日"), Turn("user", "带什么？", "阿虚")]
    assert _fired(book, chat, settings=settings)[0] == []
    sticky = _book(LoreEntry("0", ("棒球",), "棒球大赛", comment="baseball", sticky=8))
    assert _fired(sticky, chat, settings=settings)[0] == ["baseball"]  # the entry's own sticky wins


def test_delay_cooldown_probability_groups_and_recursion_are_deterministic():
    delayed = _book(LoreEntry("0", ("球",), "x", comment="delayed", delay=4))
    assert _fired(delayed, _chat("球"))[0] == [] and _fired(delayed, _chat("a", "b", "c", "球"))[0] == ["delayed"]

    cool = _book(LoreEntry("0", ("球",), "x", comment="cool", cooldown=4))
    assert _fired(cool, _chat("球"))[0] == ["cool"]
    assert _fired(cool, _chat("球", "嗯", "球"))[0] == []                  # cooling down
    assert _fired(cool, _chat("球", "嗯", "a", "嗯", "球"))[0] == ["cool"]  # cooled down

    rare = _book(*(LoreEntry(str(i), ("球",), "x", comment=f"e{i}", probability=50) for i in range(20)))
    first = _fired(rare, _chat("球"))[0]
    assert 0 < len(first) < 20 and _fired(rare, _chat("球"))[0] == first  # a roll, but the same one every time

    group = _book(LoreEntry("0", ("球",), "a", comment="a", group="ball"),
                  LoreEntry("1", ("球",), "b", comment="b", group="ball"),
                  LoreEntry("2", ("球",), "c", comment="c", group="ball", group_override=True, order=1))
    assert _fired(group, _chat("球"))[0] == ["c"]  # the override wins the group
    no_override = _book(*group.entries[:2])
    winner = _fired(no_override, _chat("球"))[0]
    assert len(winner) == 1 and _fired(no_override, _chat("球"))[0] == winner

    chain = _book(LoreEntry("0", ("长门",), "长门是外星人做的终端。", comment="nagato"),
                  LoreEntry("1", ("外星人",), "资讯统合思念体。", comment="aliens"), recursive=True)
    titles, result = _fired(chain, _chat("长门呢"))
    assert titles == ["nagato", "aliens"] and "in another entry" in result.entries[1].reason
    assert _fired(_book(*chain.entries), _chat("长门呢"))[0] == ["nagato"]  # no recursion unless asked


def test_macros_resolve_in_keys_and_contents():
    book = _book(LoreEntry("0", ("{{user}}",), "{{user}}是{{char}}的同学。", comment="user"))
    macros = lambda text: text.replace("{{user}}", "Alice").replace("{{char}}", "春日")  # noqa: E731
    titles, result = _fired(book, [Turn("user", "hi", "Alice")], macros=macros)
    assert titles == ["user"] and result.entries[0].content == "Alice是春日的同学。"


def test_a_character_book_entry_with_secondary_keys_needs_selective():
    raw = dict(CHARACTER_BOOK, entries=[book_entry(0, ["长门"], "x", "n", secondary_keys=["书"], selective=False)])
    book = parse_lorebook(json.loads(json.dumps(raw)), "b.json")
    assert book.entries[0].secondary_keys == ()  # SillyTavern ignores secondary keys of a non-selective entry
