"""When something unexpected goes wrong in the app: a failed background task is a message and the app goes on;
any other error ends the app with exit code 1 and one line naming the log that holds the traceback."""

from __future__ import annotations

import pytest
from app_support import SIZE, make_app, wait_for

from haruhi_tui.app import crash
from haruhi_tui.app.main import run
from haruhi_tui.core.errors import HaruhiError

FAILED = "a background task failed"  # how the app words a failed worker


async def test_a_failing_background_task_is_a_message_and_the_app_goes_on(tmp_path):
    """A worker that raised (once: a characters folder that was a symlink loop, RuntimeError from
    Path.resolve; the library now says "not found" for it) made Textual end the app with a traceback."""
    app = make_app(tmp_path / "chars", tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")

    def resolve_a_loop() -> None:
        loop = tmp_path / "loop"
        loop.symlink_to(loop)
        loop.resolve(strict=True)  # RuntimeError: symlink loop

    async with app.run_test(size=SIZE) as pilot:
        app.run_worker(resolve_a_loop, thread=True)
        await wait_for(pilot, lambda: any(FAILED in p for p in app.problems), what="the message")
        message = next(p for p in app.problems if FAILED in p)
        assert ("RuntimeError" in message or "OSError" in message) and str(crash.log_path()) in message
        assert "Traceback" in crash.log_path().read_text(encoding="utf-8")
        await pilot.press("ctrl+n")  # still running: the picker opens (empty)
        await pilot.pause()
        assert app.is_running
    assert not app.return_code and app.crash_message == ""


async def test_a_characters_folder_with_broken_entries_loads_the_rest(tmp_path):
    """The issue's example: a dangling link and a folder named x.txt in texts/ crashed the loading worker."""
    folder = tmp_path / "chars" / "mira" / "texts"
    folder.mkdir(parents=True)
    (folder.parent / "system_prompt.txt").write_text("你是米拉,一个骑士,说话简洁,喜欢剑术和旅行。", encoding="utf-8")
    (folder / "a.txt").write_text("米拉:「你好」\n阿虚:「嗨」\n", encoding="utf-8")
    (folder / "b.txt").symlink_to(tmp_path / "nowhere")
    (folder / "x.txt").mkdir()
    app = make_app(tmp_path / "chars", tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "mira" in app.library.characters, what="the characters")
        assert app.library.characters["mira"].scenes and not any(FAILED in p for p in app.problems)


def test_an_unexpected_error_ends_the_app_with_one_line_naming_the_log(tmp_path):
    app = make_app(tmp_path / "no-characters", tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")

    def broken_handler() -> None:  # stands in for any bug in a handler
        raise ValueError("a bug in a handler")

    async def crash_it(pilot) -> None:
        await pilot.pause()
        pilot.app.call_later(broken_handler)
        await pilot.pause(0.5)

    with pytest.raises(HaruhiError) as caught:
        run(app, headless=True, size=SIZE, auto_pilot=crash_it)
    message = str(caught.value)
    assert app.return_code == 1 and "\n" not in message
    assert "ValueError: a bug in a handler" in message and str(crash.log_path()) in message
    log = crash.log_path().read_text(encoding="utf-8")
    assert "Traceback" in log and "broken_handler" in log
