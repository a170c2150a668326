"""The context view: exactly what the model was sent, block by block, with token counts and what was cut."""

from __future__ import annotations

import pytest
from app_support import SIZE, make_app, pick_character, send, wait_for
from textual.widgets import Collapsible, DataTable, TextArea

from haruhi_tui.app.screens.context import ContextScreen
from haruhi_tui.core.engine import open_gguf
from haruhi_tui.services.bundled_model import default_gguf


@pytest.mark.slow
async def test_the_context_view_lists_the_blocks_that_were_sent(engine, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        await pilot.press("f2")  # before anything is sent: a preview of the next prompt
        await wait_for(pilot, lambda: isinstance(app.screen, ContextScreen), what="the preview")
        await pilot.pause()
        assert "next reply" in str(app.screen.query_one(".dialog-title").render())
        await pilot.press("escape")

        await send(pilot, app, "你好，今天SOS团有什么活动？")
        await send(pilot, app, "那我们要去哪里找外星人？")
        sent = app.chat_screen.session.last_context
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, ContextScreen), what="the context view")
        await pilot.pause()
        screen = app.screen
        table = screen.query_one("#blocks", DataTable)
        kinds = [row.value for row in table.rows]
        assert kinds == [b.kind for b in sent.prompt.blocks]
        assert kinds[0] == "role" and "scenes" in kinds and kinds[-2:] == ["history", "message"]
        for i, block in enumerate(sent.prompt.blocks):
            assert table.get_row_at(i)[:2] == [block.title, str(block.tokens)]
            assert block.tokens == engine.count_tokens(block.text)  # the model's own token counts
        assert len(screen.query(Collapsible)) == len(sent.prompt.blocks)
        rendered = screen.query_one("#rendered", TextArea).text
        assert rendered == sent.text and rendered.endswith("春日:「")
        summary = str(screen.query_one("#context-summary").render())
        assert f"{sent.prompt_tokens} prompt tokens" in summary and "reused from the KV cache" in summary
        assert sent.stats.reused_tokens > 0.8 * sent.stats.prompt_tokens  # the persona prefix stayed put
        await pilot.press("escape")
        assert app.screen is app.chat_screen


@pytest.mark.slow
async def test_what_was_cut_is_shown(characters_dir, tmp_path):
    small = open_gguf(default_gguf(), n_ctx=512)  # budgets shrink to fit: the role prompt is cut
    app = make_app(characters_dir, tmp_path / "s.db", small)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        await send(pilot, app, "你好")
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, ContextScreen), what="the context view")
        await pilot.pause()
        table = app.screen.query_one("#blocks", DataTable)
        role_row = table.get_row_at(0)
        assert role_row[0] == "Role prompt" and role_row[2].startswith("cut to")
        assert app.chat_screen.session.last_context.prompt_tokens < 512
