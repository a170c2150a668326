"""The chat screen, driven by Textual's pilot on the real app with real llama.cpp (Gemma 3 270M)."""

from __future__ import annotations

import sqlite3

import pytest
from app_support import SIZE, hold_after_first_token, make_app, pick_character, send, wait_for

from haruhi_tui.app.widgets import PromptInput
from haruhi_tui.core.paths import data_dir


@pytest.mark.slow
async def test_pick_a_character_send_a_line_and_the_reply_streams_in(engine, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        assert screen.session.character.name == "春日"
        assert "春日" in str(screen.query_one("#chat-title").render())
        await send(pilot, app, "你好，今天SOS团有什么活动？")
        greeting, user, reply = screen.views()  # she speaks first: a line of hers that opens a classic scene
        assert greeting.role == "assistant" and greeting.content == screen.session.messages[0].content
        assert "from a classic scene" in str(greeting.query_one(".note").render())
        assert (user.role, user.speaker, user.content) == ("user", "阿虚", "你好，今天SOS团有什么活动？")
        assert reply.role == "assistant" and reply.speaker == "春日" and reply.color
        assert reply.content.strip() and reply.status == "complete"
        assert reply.deltas_shown > 1  # streamed token by token, not dropped in at the end
        assert reply.markdown.source == reply.content
        assert "tok/s" in str(screen.query_one("#status").render())
        # everything is in the database already
        saved = app.store.branch(screen.session.chat.id)
        assert [(m.role, m.status) for m in saved] == [("assistant", "complete"), ("user", "complete"),
                                                       ("assistant", "complete")]
        assert saved[2].content == reply.content and saved[2].stats["generated_tokens"] > 0
        # the chat exports in the dataset builder's ShareGPT format (and Markdown)
        exported = data_dir() / "exports" / f"chat-{screen.session.chat.id}.md"
        for suffix in (".md", ".json"):  # what the Export chat dialog writes for each format
            assert app.write_chat_export(exported.with_suffix(suffix)) == exported.with_suffix(suffix)
        assert reply.content in exported.read_text(encoding="utf-8")
        assert exported.with_suffix(".json").is_file()
        # the message box remembers what was typed
        box = screen.query_one(PromptInput)
        await pilot.press("up")
        assert box.value == "你好，今天SOS团有什么活动？"
        await pilot.press("down")
        assert box.value == ""


@pytest.mark.slow
async def test_stop_regenerate_and_thinking_toggle(engine, characters_dir, tmp_path, monkeypatch):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    first_token = hold_after_first_token(engine, monkeypatch)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        await send(pilot, app, "给我讲一个很长的故事", wait=False)
        await wait_for(pilot, first_token.is_set, what="the first token")
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen.turns_done == 1, what="the stopped reply")
        monkeypatch.undo()
        stopped = screen.views()[-1]
        assert stopped.status == "stopped"
        assert "stopped" in str(stopped.query_one(".note").render())
        chat_id = screen.session.chat.id
        assert [m.status for m in app.store.branch(chat_id)] == ["complete", "complete", "stopped"]

        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.turns_done == 2, what="the regenerated reply")
        views = screen.views()
        assert [v.role for v in views] == ["assistant", "user", "assistant"]  # replaced on screen, greeting kept
        assert views[-1].status == "complete" and views[-1].content
        branch = app.store.branch(chat_id)
        assert [m.status for m in branch] == ["complete", "complete", "complete"]
        siblings = app.store.children(branch[1].id)
        assert len(siblings) == 2 and siblings[0].status == "stopped"  # the old reply stays as an alternative
        assert app.store.chat(chat_id).leaf_id == siblings[1].id == views[-1].message_id

        await pilot.press("ctrl+t")
        assert screen.show_thinking and all(v.show_thinking for v in screen.views() if v.role == "assistant")
        await pilot.press("ctrl+t")
        assert not screen.show_thinking


@pytest.mark.slow
async def test_the_app_fits_an_80x24_terminal(engine, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "weixiaobao")
        screen = app.chat_screen
        await send(pilot, app, "小宝，你最近在忙什么？")
        for selector in ("#chat-title", "#conversation", "#status", "#prompt"):
            region = screen.query_one(selector).region
            assert region.width > 40 and region.height >= 1 and region.bottom <= 24, selector
        assert screen.query_one("#conversation").region.height >= 12
        assert not screen.query_one("#sidebar").display  # narrow terminal: the chat list opens with ctrl+b
        await pilot.press("ctrl+b")
        assert screen.query_one("#sidebar").display


@pytest.mark.slow
async def test_a_locked_database_mid_chat_is_a_message_and_nothing_is_lost(engine, characters_dir, tmp_path):
    db = tmp_path / "s.db"
    app = make_app(characters_dir, db, engine, db_timeout=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            await send(pilot, app, "数据库被锁住了吗？")
            assert any("locked by another program" in p for p in app.problems)
            assert [v.role for v in screen.views()] == ["assistant", "user", "assistant"]  # the chat went on
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        await send(pilot, app, "现在呢？")
        saved = app.store.branch(screen.session.chat.id)
        assert [m.content for m in saved if m.role == "user"] == ["数据库被锁住了吗？", "现在呢？"]
        assert len(saved) == 5 and screen.session.unsaved == 0


async def test_a_new_chat_opens_with_a_greeting_whose_alternatives_switch(characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        [greeting] = screen.views()
        first = screen.session.messages[0]
        assert greeting.role == "assistant" and greeting.content == first.content and first.stats["greeting"] == "scene"
        note = str(greeting.query_one(".note").render())
        assert "from a classic scene" in note and "1 of 3" in note
        await pilot.press("ctrl+r")  # nothing was asked yet: the greeting stays
        assert [v.content for v in screen.views()] == [first.content] and not screen.generating
        await pilot.press("alt+right")
        await wait_for(pilot, lambda: screen.views() and screen.views()[0].content != first.content,
                       what="the next greeting")
        assert "2 of 3" in str(screen.views()[0].query_one(".note").render())
        assert app.store.chat(screen.session.chat.id).leaf_id == screen.session.messages[0].id != first.id
