"""The help screen and the command palette."""

from __future__ import annotations

import io

import pytest
from app_support import SIZE, make_app, pick_character, wait_for
from rich.console import Console
from textual.command import CommandPalette

from haruhi_tui.app.screens.chat import ChatScreen
from haruhi_tui.app.screens.dialogs import TextDialog
from haruhi_tui.app.screens.help import HelpScreen, bindings_of
from haruhi_tui.app.screens.pick import CharacterPicker, ModelPicker


@pytest.mark.slow
async def test_help_lists_every_key_of_the_chat_screen(characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        await pilot.pause()
        console = Console(width=80, record=True, file=io.StringIO())
        console.print(app.screen.query_one("#keys").content)
        text = console.export_text()
        for binding in ChatScreen.BINDINGS:
            assert binding.key in text and binding.tooltip in text, binding.key
        for key in ("enter", "ctrl+p", "up / down", "ctrl+q"):
            assert key in text
        # what a first session could not find: every key of the chat, the picker's F5, the launcher, the
        # palette's commands (your name, settings, continue, impersonate, delete)
        for binding in bindings_of(ChatScreen):
            assert binding.key in text, binding.key
        for key in ("f3", "f4", "f5", "f6", "f7", "f8", "f9", "ctrl+b", "ctrl+k", "alt+up", "alt+left", "ctrl+delete"):
            assert key in text, key
        for command in ("Your name", "Chat settings", "Continue reply", "Write my line", "Delete message",
                        "Import character card", "Download model", "Compare with model"):
            assert command in text, command
        await pilot.press("escape")
        assert app.screen is app.chat_screen


@pytest.mark.slow
async def test_the_command_palette_runs_app_commands(characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="the palette")
        await pilot.press(*"Pick model")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker), what="the model picker")
        await pilot.press("escape")

        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="the palette")
        await pilot.press(*"Reasoning effort: high")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.chat_screen.session.settings.reasoning_effort == "high", what="the effort")
        assert app.store.pref("character:haruhi")["reasoning_effort"] == "high"

        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="the palette")
        await pilot.press(*"Your name")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the name dialog")
        await pilot.pause()
        app.screen.query_one("#dialog-text").value = "SOS团团员"
        await pilot.press("enter")
        assert app.chat_screen.session.settings.user_name == "SOS团团员"
        assert app.store.chat(app.chat_screen.session.chat.id).settings["user_name"] == "SOS团团员"

        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="the palette")
        await pilot.press(*"New chat")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="the character picker")
