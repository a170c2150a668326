"""Sessions on the chat screen: resume after a restart, the chat list (rename, delete), and a kill -9
mid-reply that loses nothing that was sent."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from app_support import SIZE, hold_after_first_token, make_app, pick_character, send, wait_for

from haruhi_tui.app.screens.dialogs import ConfirmDialog, TextDialog
from haruhi_tui.app.widgets import ChatList, MessageView

SUPPORT = Path(__file__).resolve().parents[1] / "support"



@pytest.mark.slow
async def test_a_chat_survives_a_restart_and_the_list_renames_and_deletes(engine, characters_dir, tmp_path):
    db = tmp_path / "s.db"
    app = make_app(characters_dir, db, engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        await send(pilot, app, "你好，今天SOS团有什么活动？")
        first = [(v.role, v.content) for v in app.chat_screen.views()]
        first_chat = app.chat_screen.session.chat.id
        await pilot.press("ctrl+q")

    app = make_app(characters_dir, db, engine, n_ctx=2048)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.chat_screen
        await wait_for(pilot, lambda: screen.session is not None, what="the last chat to resume")
        assert screen.session.chat.id == first_chat
        assert [(v.role, v.content) for v in screen.views()] == first
        await send(pilot, app, "那我们要去哪里找外星人？")  # the conversation goes on where it stopped
        assert len(screen.views()) == 5  # her greeting and two exchanges

        await pilot.press("ctrl+n")  # a second chat, with someone else (a chat left without a word is not kept)
        await pick_character(pilot, app, "weixiaobao")
        assert screen.session.chat.id != first_chat
        screen.session.add_user_message("小宝，你好")

        await pilot.press("ctrl+b")
        chats = screen.query_one(ChatList)
        assert chats.has_focus and chats.option_count == 2
        chats.highlighted = [chats.get_option_at_index(i).id for i in range(2)].index(str(first_chat))
        await pilot.press("enter")  # resume the first chat from the list
        await wait_for(pilot, lambda: screen.session.chat.id == first_chat, what="resuming from the list")
        assert len(screen.views()) == 5

        await pilot.press("ctrl+b")
        await pilot.press("ctrl+b")
        chats.highlighted = [chats.get_option_at_index(i).id for i in range(2)].index(str(first_chat))
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the rename dialog")
        app.screen.query_one("#dialog-text").value = "SOS 团会议"
        await pilot.press("enter")
        assert app.store.chat(first_chat).title == "SOS 团会议"

        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="the delete dialog")
        await pilot.click("#yes")
        await wait_for(pilot, lambda: screen.session is None, what="the chat to go")
        assert [c.id for c in app.store.chats()] != [] and first_chat not in [c.id for c in app.store.chats()]
        assert app.store.messages(first_chat) == []
        assert not screen.views()


@pytest.mark.slow
async def test_kill_9_mid_reply_keeps_the_message_and_the_partial_reply(characters_dir, tmp_path, engine):
    db = tmp_path / "s.db"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SUPPORT), str(SUPPORT.parents[1])]))
    proc = subprocess.Popen([sys.executable, str(SUPPORT / "app_kill_driver.py"), str(characters_dir), str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        partial = None
        while partial is None:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no partial reply was saved in time"
            time.sleep(0.05)
            if not db.exists():
                continue
            with sqlite3.connect(db) as raw:
                try:
                    row = raw.execute("SELECT content, status FROM messages WHERE role = 'assistant' "
                                      "AND status = 'incomplete'").fetchone()  # the reply, not her greeting
                except sqlite3.OperationalError:
                    continue
            if row and row[0]:
                partial = row
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert partial[1] == "incomplete"

    app = make_app(characters_dir, db, engine)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.chat_screen
        await wait_for(pilot, lambda: screen.session is not None, what="the interrupted chat to resume")
        # the views are mounted with the session; their own parts (the status note) compose a moment later
        await wait_for(pilot, lambda: len(screen.views()) == 3 and screen.views()[2].query(".note"),
                       what="the resumed reply's status note")
        greeting, user, reply = screen.views()
        assert greeting.role == "assistant" and greeting.status == "complete"
        assert (user.role, user.content) == ("user", "给我讲讲SOS团的故事吧")
        assert reply.status == "incomplete" and reply.content.startswith(partial[0].strip()[:2])
        assert "incomplete" in str(reply.query_one(".note").render())
        await pilot.press("ctrl+r")  # and it can be finished
        await wait_for(pilot, lambda: screen.turns_done == 1, what="the regenerated reply")
        assert [v.status for v in screen.views() if isinstance(v, MessageView)] == ["complete"] * 3


@pytest.mark.slow
async def test_quitting_mid_reply_stops_it_and_saves_it_as_stopped(engine, characters_dir, tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    app = make_app(characters_dir, db, engine)
    first_token = hold_after_first_token(engine, monkeypatch)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        await send(pilot, app, "你好", wait=False)
        await wait_for(pilot, first_token.is_set, what="the reply to start")
        chat_id = app.chat_screen.session.chat.id
        await pilot.press("ctrl+q")
    assert app.return_code == 0
    saved = sqlite3.connect(db).execute(
        "SELECT role, status FROM messages WHERE chat_id = ? ORDER BY id", (chat_id,)).fetchall()
    *greetings, said, stopped = saved  # her greeting and its alternatives (siblings), then the turn
    assert (said, stopped) == (("user", "complete"), ("assistant", "stopped"))
    assert greetings and set(greetings) == {("assistant", "complete")}
