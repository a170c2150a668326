"""Styles stay where they belong, and text typed into any dialog is on the screen.

A role-play fan found every dialog input blank: the chat title's ``#title { height: 1 }`` also sized the
rename dialog's ``Input#title``, leaving room for its border only. Ids repeat across screens, so every id is
styled inside its screen or widget; only a few shared classes are styled app-wide.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from app_support import SIZE, make_app, pick_character, screen_text, wait_for
from textual.command import CommandPalette
from textual.screen import ModalScreen
from textual.widgets import Input

import haruhi_tui.app as app_package

SHARED_CLASSES = {"dialog", "dialog-title", "problem", "note", "section", "buttons"}


def top_level_selectors(css: str) -> list[str]:
    """The selectors of the rules at the top of a (nested) Textual stylesheet."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    selectors, depth, start = [], 0, 0
    for i, ch in enumerate(css):
        if ch == "{":
            if depth == 0:
                selectors += [s.strip() for s in css[start:i].split(",")]
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                start = i + 1
    return selectors


def test_every_id_is_styled_inside_its_screen_or_widget():
    css = (Path(app_package.__file__).parent / "app.tcss").read_text(encoding="utf-8")
    selectors = top_level_selectors(css)
    assert selectors, "no rules found"
    for selector in selectors:
        first = selector.split()[0]
        if first.startswith("."):
            assert first[1:] in SHARED_CLASSES, f"{selector}: a class styled app-wide that is not a shared one"
        else:
            assert first[0].isupper(), f"{selector}: scope it to its screen or widget (ids repeat across screens)"
    assert top_level_selectors("#title { height: 1; }") == ["#title"]  # the check sees what it must refuse


async def _type_and_read(pilot, app, marker: str) -> str:
    box = app.screen.focused
    assert isinstance(box, Input), f"{type(app.screen).__name__}: the focus is not in a text box"
    box.value = ""
    await pilot.press(*marker)
    await pilot.pause()
    return screen_text(app)


async def _palette(pilot, app, command: str) -> None:
    await pilot.press("ctrl+p")
    await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="the palette")
    await pilot.press(*command)
    await pilot.pause(0.5)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, ModalScreen) and not isinstance(app.screen, CommandPalette),
                   what=command)
    await pilot.pause()


@pytest.mark.slow
async def test_text_typed_into_every_dialog_is_on_screen(characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        screen.session.add_user_message("你好")
        await screen.show_session(screen.session)
        dialogs = {
            "rename chat": lambda: screen.rename_chat(),
            "edit a message (F4)": lambda: pilot.press("f4"),
            "your name": lambda: _palette(pilot, app, "Your name"),
            "chat settings (F9)": lambda: pilot.press("f9"),
            "import a card": lambda: _palette(pilot, app, "Import character card"),
            "download a model": lambda: _palette(pilot, app, "Download model"),
        }
        for name, open_dialog in dialogs.items():
            result = open_dialog()
            if result is not None:
                await result
            await wait_for(pilot, lambda: isinstance(app.screen, ModalScreen), what=name)
            await pilot.pause()
            shown = await _type_and_read(pilot, app, "Zq7xy")
            assert "Zq7xy" in shown, f"{name}: typed text is not on the screen:\n{shown}"
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is screen, what=f"{name} to close")

        await pilot.press("f3")  # the memory screen's pin dialogs
        await wait_for(pilot, lambda: type(app.screen).__name__ == "MemoryScreen", what="the memory screen")
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, ModalScreen), what="the pin dialog")
        assert "Zq7xy" in await _type_and_read(pilot, app, "Zq7xy"), "add a pin"
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "MemoryScreen", what="back on memory")
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, ModalScreen), what="the edit pin dialog")
        assert "Wv3" in await _type_and_read(pilot, app, "Wv3"), "edit a pin"
        await pilot.press("escape")
