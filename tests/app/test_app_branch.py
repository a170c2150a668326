"""Edit and branch in the app: editing an earlier line makes a new branch, the old one comes back with alt+left."""

from __future__ import annotations

import pytest
from app_support import SIZE, make_app, pick_character, send, wait_for
from textual.widgets import Input

from haruhi_tui.app.screens.dialogs import TextDialog


@pytest.mark.slow
async def test_edit_makes_a_branch_and_switching_restores_the_old_one(engine, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        await send(pilot, app, "你好")
        await send(pilot, app, "今天去哪里？")
        session = screen.session
        old_ids = [m.id for m in session.messages]
        old_texts = [v.content for v in screen.views()]

        await pilot.press("f4")  # nothing selected: the last user line
        await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the edit dialog")
        assert app.screen.query_one(Input).value == "今天去哪里？"
        app.screen.query_one(Input).value = "今天吃什么？"
        before = screen.turns_done
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.turns_done > before, what="the reply to the edited line")
        assert session.messages[0].stats["greeting"]  # the chat opened with her greeting
        assert [m.content for m in session.messages][1:4] == ["你好", session.messages[2].content, "今天吃什么？"]
        assert session.messages[2].id == old_ids[2] and len(session.messages) == 5
        assert screen.views()[3].content == "今天吃什么？"

        await pilot.press("alt+left")  # the previous version of the (edited) line: the old branch, whole
        await pilot.pause()
        assert [m.id for m in session.messages] == old_ids
        assert [v.content for v in screen.views()] == old_texts
        assert app.store.chat(session.chat.id).leaf_id == old_ids[-1]
        await pilot.press("alt+right")
        await pilot.pause()
        assert session.messages[3].content == "今天吃什么？"

        await pilot.press("alt+up")  # from the edited line (still selected) up to the first reply: edit it,
        #                              no generation
        await pilot.pause()
        assert screen.selected == session.messages[2].id
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the edit dialog")
        app.screen.query_one(Input).value = "我改过的回答"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(session.messages) == 3, what="the edited reply")
        assert session.leaf.content == "我改过的回答" and session.alternatives(session.leaf.id) == (2, 2)

        screen.generating = True  # a branch switch while a reply is coming is refused, nothing changes
        ids = [m.id for m in session.messages]
        await pilot.press("alt+left")
        await pilot.pause()
        assert [m.id for m in session.messages] == ids
        screen.generating = False
