"""Helpers for the app's pilot tests: one Gemma engine per test module, waiting on real work."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from haruhi_tui.app.app import HaruhiApp
from haruhi_tui.core.engine import Sampling

#: Greedy and short: the tests check behaviour, not prose; CI has two cores.
GREEDY = Sampling(temperature=0.0, max_tokens=24, repeat_penalty=1.0)
SIZE = (80, 24)


def make_app(characters_dir: Path, db_path: Path, engine=None, **kwargs) -> HaruhiApp:
    kwargs.setdefault("sampling", GREEDY)
    kwargs.setdefault("n_ctx", 2048)
    return HaruhiApp(characters_dir=characters_dir, db_path=db_path, engine=engine, **kwargs)


async def wait_for(pilot, predicate, timeout: float = 120.0, what: str = "") -> None:
    """Let the app run until ``predicate()`` holds (a worker finished, a screen opened)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.05)


async def pick_character(pilot, app: HaruhiApp, name: str) -> None:
    from haruhi_tui.app.screens.pick import CharacterPicker

    await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="the character picker")
    await pilot.pause()
    await pilot.press(*name)
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.chat_screen.session is not None and app.screen is app.chat_screen,
                   what="a new chat")


async def open_download_dialog(pilot, app: HaruhiApp):
    """Close the character picker the app opens with and open the model download dialog; returns it."""
    from haruhi_tui.app.screens.download import DownloadDialog
    from haruhi_tui.app.screens.pick import CharacterPicker

    await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="the picker")
    await pilot.press("escape")
    app.action_download_model()
    await wait_for(pilot, lambda: isinstance(app.screen, DownloadDialog), what="the download dialog")
    return app.screen


async def send(pilot, app: HaruhiApp, text: str, wait: bool = True) -> None:
    from haruhi_tui.app.widgets import PromptInput

    screen = app.chat_screen
    box = screen.query_one(PromptInput)
    box.focus()
    box.value = text
    before = screen.turns_done
    await pilot.press("enter")
    if wait:
        await wait_for(pilot, lambda: screen.turns_done > before, what="the reply")


def hold_after_first_token(engine, monkeypatch) -> threading.Event:
    """Make the real stream wait after its first token until its ``cancel`` is set (Esc, quit).

    With the persona prefix already in llama.cpp's KV cache a short in-character line can finish before a
    key press arrives; holding the stream makes "press a key mid-reply" deterministic. Returns an event set
    once the first token exists.
    """
    first_token = threading.Event()
    real_stream = engine.stream

    def held_stream(prompt, sampling=None, *, cancel=None, on_token=None):
        def hold(token):
            first_token.set()
            if cancel is not None:
                cancel.wait(timeout=30)
            if on_token is not None:
                on_token(token)
        return real_stream(prompt, sampling, cancel=cancel, on_token=hold)

    monkeypatch.setattr(engine, "stream", held_stream)
    return first_token


def screen_text(app) -> str:
    """What the terminal shows now, as plain text (one line per row): to check that text is really visible."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())
