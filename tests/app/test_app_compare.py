"""Compare in the app: one key sends the line to two models, both replies stream side by side and are stored
as labelled siblings; the picked one is where the chat goes on."""

from __future__ import annotations

import pytest
from app_support import make_app, pick_character, wait_for
from textual.widgets import Static

from haruhi_tui.app.screens.compare import CompareScreen
from haruhi_tui.app.widgets import PromptInput
from haruhi_tui.core.engine import open_gguf
from haruhi_tui.services.bundled_model import default_gguf


@pytest.fixture(scope="module")
def engines():
    path = default_gguf()
    return open_gguf(path, n_ctx=2048), open_gguf(path, n_ctx=1024)  # two Llama objects of the 270M Gemma


@pytest.mark.slow
async def test_compare_shows_two_replies_and_keeps_the_picked_one(engines, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engines[0])
    app.models.compare_engine = engines[1]
    async with app.run_test(size=(120, 30)) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        screen.query_one(PromptInput).value = "你好，今天做什么？"
        await pilot.press("ctrl+k")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="the compare screen")
        compare = app.screen
        await wait_for(pilot, lambda: not compare.generating, what="both replies")
        assert len(compare.replies) == 2
        left, right = compare.replies
        assert left.model == engines[0].name and right.model.startswith(engines[1].name)
        assert left.parent_id == right.parent_id
        for i, reply in enumerate(compare.replies):
            assert reply.status == "complete"
            assert str(compare.query_one(f"#text-{i}", Static).render()).strip() == reply.content.strip()
        session = screen.session
        assert screen.generating  # the chat screen refuses other turns while the compare is open
        await pilot.press("1")
        await wait_for(pilot, lambda: app.screen is screen and not screen.generating, what="back to the chat")
        await pilot.pause()
        assert session.leaf.id == left.id
        assert app.store.chat(session.chat.id).leaf_id == left.id
        assert [v.content for v in screen.views()] == [session.messages[0].content, "你好，今天做什么？", left.content]
        assert [m.id for m in app.store.siblings(left.id)] == [left.id, right.id]
