"""The help screen and the command palette."""

from __future__ import annotations

import io

from app_support import SIZE, make_app, pick_character, wait_for
from rich.console import Console
from textual.command import CommandPalette

from haruhi_tui.app.screens.help import HelpScreen
from haruhi_tui.app.screens.pick import CharacterPicker, ModelPicker


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
        for key, what in (("escape", "Stop"), ("ctrl+r", "Regenerate"), ("f2", "Context"), ("ctrl+t", "Thinking"),
                          ("ctrl+n", "New chat"), ("ctrl+o", "Model"), ("ctrl+p", "Command palette"), ("enter", "Send")):
            assert key in text and what in text, key
        await pilot.press("escape")
        assert app.screen is app.chat_screen


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
        await pilot.press(*"New chat")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="the character picker")
