"""Memory in the app: pins added on the memory screen show in the context view and the prompt; a long chat
gets a summary written after a reply, shown (with its token count) and editable."""

from __future__ import annotations

import pytest
from app_support import SIZE, make_app, pick_character, send, wait_for
from textual.widgets import DataTable, Input, TextArea

from haruhi_tui.app.screens.context import ContextScreen
from haruhi_tui.app.screens.dialogs import TextDialog
from haruhi_tui.app.screens.memory import MemoryScreen


@pytest.mark.slow
async def test_pins_and_summary_reach_the_prompt_and_the_context_view(engine, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        session = screen.session
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, MemoryScreen), what="the memory screen")
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the pin dialog")
        app.screen.query_one(Input).value = "阿虚害怕青蛙"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MemoryScreen), what="back on the memory screen")
        assert [p.text for p in app.store.pins(session.chat.id)] == ["阿虚害怕青蛙"]
        await pilot.press("escape")

        for i in range(10):  # a long chat, straight into the store: past the history budget
            user = session.add_user_message(f"第{i}天：我们去了车站前的咖啡店，阿虚又忘了带钱包，古泉请客。" * 2)
            line = f"哼，第{i}天还是没找到外星人，明天九点车站集合！" * 2
            session.messages.append(session._insert(user, "assistant", line))
        await screen.show_session(session)
        await send(pilot, app, "明天去哪里？")  # the reply, then the summary is written
        assert session.chat.summary and app.store.chat(session.chat.id).summary == session.chat.summary

        await send(pilot, app, "好的")
        sent = session.last_context
        assert "阿虚害怕青蛙" in sent.text and session.chat.summary in sent.text
        assert sent.prompt_tokens + session.settings.max_tokens <= engine.n_ctx
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, ContextScreen), what="the context view")
        await pilot.pause()
        table = app.screen.query_one("#blocks", DataTable)
        kinds = [row.value for row in table.rows]
        assert "pins" in kinds and "summary" in kinds
        for i, block in enumerate(sent.prompt.blocks):
            if block.kind in ("pins", "summary"):
                assert table.get_row_at(i)[1] == str(engine.count_tokens(block.text))
        await pilot.press("escape")

        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, MemoryScreen), what="the memory screen")
        await pilot.pause()
        area = app.screen.query_one("#summary", TextArea)
        assert area.text == session.chat.summary
        area.text = "春日每天带团员去车站寻找外星人。"
        await pilot.press("ctrl+s")
        assert app.store.chat(session.chat.id).summary == "春日每天带团员去车站寻找外星人。"
        app.screen.query_one("#pins").focus()
        await pilot.pause()
        await pilot.press("d")  # asks first
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmDialog", what="the question")
        assert app.store.pins(session.chat.id) != []
        await pilot.press("y")
        await wait_for(pilot, lambda: app.store.pins(session.chat.id) == [], what="the pin to go")
