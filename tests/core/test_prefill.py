"""Evaluating a prompt ahead of the reply (while the user types), on the real model: the reply starts from
the cache, never waits for it, and a change of topic is paid for before Enter."""

from __future__ import annotations

import threading
import time

import pytest

from haruhi_tui.core.characters import load_character
from haruhi_tui.core.decode_threads import candidate_counts
from haruhi_tui.core.engine import Sampling, default_threads, open_gguf
from haruhi_tui.services.bundled_model import default_gguf
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.services.warmup import settle, warm
from haruhi_tui.store import MEMORY, Store

GREEDY = Sampling(temperature=0.0, max_tokens=16, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def haruhi(characters_dir):
    return load_character(characters_dir / "haruhi")


@pytest.mark.slow
def test_the_reply_to_a_line_evaluated_while_it_was_typed_starts_from_the_cache(engine, haruhi):
    session = ChatSession.start(Store(MEMORY), haruhi)
    session.send(engine, "你好，今天SOS团有什么活动？", sampling=GREEDY)
    line = "那我们要去哪里找外星人？"
    assert warm(session, engine, line[:4])[1] > 0  # typing goes on: each pause evaluates what is new
    assert warm(session, engine, line)[1] > 0
    session.send(engine, line, sampling=GREEDY)
    stats = engine.last_stats
    assert stats.reused_tokens == stats.prompt_tokens - 1  # all but the token that gives fresh logits


@pytest.mark.slow
def test_a_change_of_topic_is_evaluated_before_enter_with_the_scenes_the_line_gets(engine, haruhi):
    session = ChatSession.start(Store(MEMORY), haruhi)
    session.send(engine, "你好，今天SOS团有什么活动？", sampling=GREEDY)
    before = list(session.chat.scene_ids)
    line = "你为什么总是这么有精神？"  # no word in common with the scenes about the SOS brigade's plans
    warmed, _ = warm(session, engine, line)
    reply = session.send(engine, line, sampling=GREEDY)
    assert warmed.prompt.scene_ids == session.chat.scene_ids
    stats = engine.last_stats
    assert session.chat.scene_ids != before  # new scenes for the new topic, chosen as without the warm-up
    fresh = ChatSession.start(Store(MEMORY), haruhi).builder(engine).select_scenes(line, sticky_ids=before)
    assert sorted(session.chat.scene_ids) == sorted(s.scene_id for s in fresh)
    assert stats.reused_tokens == stats.prompt_tokens - 1 and reply.status == "complete"


OPENING = ["你好，今天SOS团有什么活动？", "那我们要去哪里找外星人？", "我觉得你想太多了。", "好吧好吧，那我该做什么？"]
LONGER = Sampling(temperature=0.0, max_tokens=48, min_tokens=48, repeat_penalty=1.0)  # a history worth keeping


def _chat_with_history(engine, haruhi) -> ChatSession:
    session = ChatSession.start(Store(MEMORY), haruhi)
    for line in OPENING:
        session.send(engine, line, sampling=LONGER)
    return session


@pytest.mark.slow
def test_a_topic_changed_while_typing_is_told_beside_the_line_and_settles_while_the_reply_is_read(engine, haruhi):
    """A line that changes the topic keeps the last reply's system block, history and all, in the cache: its new
    scenes are told beside it, so a change at its last keystrokes costs at Enter only the changed scene and the
    line. While the reply is read, the scenes move into the system block, and the next line adds only itself."""
    session = _chat_with_history(engine, haruhi)
    before = list(session.chat.scene_ids)
    line = "你为什么总是这么有精神？"
    fresh = sorted(s.scene_id for s in session.builder(engine).select_scenes(line, sticky_ids=before))
    assert set(fresh).isdisjoint(before)
    warmed, _ = warm(session, engine, line[:-3])  # the scenes change again at the last keystrokes
    assert warmed.prompt.system_scene_ids == before
    warmed, evaluated = warm(session, engine, line)
    assert warmed.prompt.system_scene_ids == before and sorted(warmed.prompt.scene_ids) == fresh
    history_tokens = sum(b.tokens for b in warmed.prompt.blocks if b.kind == "history")
    assert 0 < evaluated < history_tokens  # the history stayed cached
    session.send(engine, line, sampling=GREEDY)
    stats = engine.last_stats
    assert stats.reused_tokens == stats.prompt_tokens - 1
    assert session.last_context.prompt.system_scene_ids == before and sorted(session.chat.scene_ids) == fresh
    assert settle(session, engine) > 0  # while the reply is read: the scenes move into the system block
    following = "明天还要继续吗？"  # the same topic: the scenes stay; sent at once, with no warm-up
    session.send(engine, following, sampling=GREEDY)
    stats, prompt = engine.last_stats, session.last_context.prompt
    assert sorted(prompt.system_scene_ids) == fresh and prompt.scene_ids == prompt.system_scene_ids
    assert stats.evaluated_tokens <= len(engine.tokenize_prompt(following)) + 8  # the line and its frame only


@pytest.mark.slow
def test_without_a_warm_up_a_change_of_topic_puts_its_scenes_in_place_at_once(engine, haruhi):
    """Holding the scenes only moves their cost to the next turn when nothing evaluates it meanwhile (the
    command-line chat): there the new scenes go straight into the system block."""
    session = _chat_with_history(engine, haruhi)
    session.send(engine, "你为什么总是这么有精神？", sampling=GREEDY)
    prompt = session.last_context.prompt
    assert prompt.system_scene_ids == prompt.scene_ids == session.chat.scene_ids
    assert not any("beside" in b.title for b in prompt.blocks)


@pytest.mark.slow
def test_a_draft_too_short_to_name_a_topic_keeps_the_cached_scenes(engine, haruhi):
    session = ChatSession.start(Store(MEMORY), haruhi)
    session.send(engine, "棒球比赛我们一定能赢吗？", sampling=GREEDY)
    scenes = list(session.chat.scene_ids)
    assert session.builder(engine).select_scenes("我觉", sticky_ids=scenes) != scenes  # 觉 is in other scenes
    assert warm(session, engine, "我觉")[0].prompt.scene_ids == scenes


@pytest.mark.slow
def test_a_reply_never_waits_for_a_prefill_to_finish(engine, haruhi):
    long_prompt = "阿虚:「今天的社团活动是什么？」\n" * 120  # ~1,400 tokens, shares nothing with the cache
    done: list[int] = []
    engine.llama.reset()  # an empty cache: the prefill's progress shows in n_tokens
    warm = threading.Thread(target=lambda: done.append(engine.prefill(long_prompt)))
    warm.start()
    deadline = time.monotonic() + 120
    while engine.llama.n_tokens < 64 and warm.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)  # the first chunk is in
    text = "".join(d.text for d in engine.stream("春日:「今天", GREEDY))
    warm.join(timeout=60)
    assert not warm.is_alive() and text
    total = len(engine.tokenize_prompt(long_prompt))
    assert 0 < done[0] < total  # it gave way between two chunks


def test_the_thread_count_is_measured_unless_it_is_given(engine):
    assert engine.threads.counts == candidate_counts(default_threads())
    fixed = open_gguf(default_gguf(), n_ctx=256, n_threads=1)
    try:
        assert fixed.threads.counts == (1,) and fixed.threads.fixed
        list(fixed.stream("春日:「今天", Sampling(temperature=0.0, max_tokens=4, repeat_penalty=1.0)))
        assert fixed.last_stats.threads == 1
    finally:
        fixed.close()
