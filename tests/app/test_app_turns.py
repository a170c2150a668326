"""The chat's settings (F9), continue (F7), impersonate (F8) and delete a message (ctrl+delete) from the keys,
and the bundled model named as the small demo model it is, wherever a model is named."""

from __future__ import annotations

import pytest
from app_support import SIZE, make_app, pick_character, screen_text, send, wait_for
from textual.screen import ModalScreen
from textual.widgets import Input

from haruhi_tui.app.messages import ModelReady
from haruhi_tui.app.screens.pick import ModelPicker
from haruhi_tui.app.widgets import PromptInput


@pytest.mark.slow
async def test_settings_continue_impersonate_and_delete(engine, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine, sampling=None)  # each chat's own settings
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        await pilot.pause()
        assert "F8 writes your line" in " ".join(screen_text(app).split())  # the keys beyond the footer
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, ModalScreen), what="the settings")
        await pilot.pause()
        app.screen.query_one("#settings-temperature", Input).value = "0"
        app.screen.query_one("#settings-length", Input).value = "16"
        app.screen.query_one("#settings-name", Input).value = "阿虚君"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen, what="the settings to close")
        saved = app.store.chat(screen.session.chat.id).settings
        assert (saved["temperature"], saved["max_tokens"], saved["user_name"]) == (0.0, 16, "阿虚君")

        await send(pilot, app, "给我讲讲SOS团的故事吧")
        reply = screen.session.leaf
        assert 0 < reply.stats["generated_tokens"] <= 16 and screen.views()[-2].speaker == "阿虚君"
        shown = len(screen.views())

        before = reply.content
        await pilot.press("f7")
        await wait_for(pilot, lambda: screen.turns_done == 2, what="the continued reply")
        longer = screen.session.leaf
        assert longer.id == reply.id and longer.content.startswith(before) and len(longer.content) > len(before)
        assert screen.views()[-1].content == longer.content and len(screen.views()) == shown
        stored = len(app.store.messages(screen.session.chat.id))

        await pilot.press("f8")
        box = screen.query_one(PromptInput)
        await wait_for(pilot, lambda: box.value and not screen.generating, what="your line, written for you")
        assert len(app.store.messages(screen.session.chat.id)) == stored and box.has_focus

        await pilot.press("alt+up")  # the reply, selected
        await pilot.press("ctrl+delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ModalScreen), what="the delete question")
        assert "Delete this message?" in screen_text(app)
        await pilot.press("y")
        await wait_for(pilot, lambda: screen.session.leaf.role == "user", what="the deletion")
        assert [v.role for v in screen.views()][-1] == "user" and len(screen.views()) == shown - 1
        assert len(app.store.messages(screen.session.chat.id)) == stored - 1


@pytest.mark.slow
async def test_the_bundled_model_is_named_as_a_demo(engine, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        screen.post_message(ModelReady(engine))  # what the status says once a model is loaded
        await pilot.pause()
        top = screen_text(app).splitlines()[0]  # on screen at 80 columns, after 春日's long work title
        assert "demo model" in top and "春日" in top
        status = str(screen.query_one("#status").render())
        assert "demo" in status and "Download model" in status and len(status) <= 78  # one line at 80x24
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker), what="the model picker")
        await pilot.pause()
        shown = screen_text(app)
        assert "demo model" in shown and "Download model" in shown
