"""The character and model pickers, and what the app does when characters or models are missing or broken."""

from __future__ import annotations

import os

import pytest
from app_support import SIZE, make_app, pick_character, send, wait_for
from textual.widgets import OptionList

from haruhi_tui.app.screens.get_characters import GetCharactersScreen
from haruhi_tui.app.screens.pick import BUNDLED, GET_MORE, CharacterPicker, ModelPicker
from haruhi_tui.services.bundled_model import default_gguf


@pytest.mark.slow
async def test_the_character_picker_shows_name_work_and_first_line_and_filters(characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="the picker")
        await pilot.pause()
        options = app.screen.query_one("#characters", OptionList)
        assert options.option_count == len(app.library.characters) + 1 >= 31
        assert options.get_option_at_index(options.option_count - 1).id == GET_MORE  # "Get more characters…" last
        shown = [options.get_option_at_index(i) for i in range(options.option_count)]
        labels = {option.id: str(option.prompt) for option in shown}
        assert "韦小宝" in labels["weixiaobao"] and "鹿鼎记" in labels["weixiaobao"]
        assert app.library.characters["weixiaobao"].first_line[:10] in labels["weixiaobao"]
        assert "Harry Potter" in labels["Hermione"]
        await pilot.press(*"鹿鼎")
        assert [options.get_option_at_index(i).id for i in range(options.option_count)] == ["weixiaobao", GET_MORE]
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.chat_screen.session is not None, what="the chat")
        assert app.chat_screen.session.character.name == "韦小宝"
        assert app.chat_screen.session.settings.user_name == app.library.characters["weixiaobao"].interlocutor


async def test_an_empty_characters_folder_is_a_message_and_the_app_keeps_running(tmp_path):
    empty = tmp_path / "characters"
    empty.mkdir()
    app = make_app(empty, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="the picker")
        await pilot.pause()
        assert "no character folders" in str(app.screen.query_one(".problem").render())
        assert any("HARUHI_CHARACTERS" in p for p in app.problems)
        options = app.screen.query_one("#characters", OptionList)  # the bundled starters are still there
        assert {"haruhi", "weixiaobao", GET_MORE} <= {options.get_option_at_index(i).id
                                                      for i in range(options.option_count)}
        await pilot.press("escape")
        await pilot.press("f1")  # still alive and answering keys
        assert type(app.screen).__name__ == "HelpScreen"


@pytest.mark.slow
async def test_a_broken_model_is_a_message_then_the_bundled_one_is_picked_and_answers(characters_dir, tmp_path):
    broken = tmp_path / "models" / "broken.gguf"
    broken.parent.mkdir()
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 7)  # a header cut short
    (tmp_path / "models" / "gemma.gguf").symlink_to(default_gguf())
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=broken)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        title = app.chat_screen.query_one("#chat-title")
        await wait_for(pilot, lambda: app.models.error and "no model" in str(title.render()), what="the model error")
        assert "broken.gguf cannot be used" in app.models.error
        assert "no model" in str(title.render())
        await send(pilot, app, "有人吗？")  # said while no model is loaded: kept, not lost
        assert [v.role for v in app.chat_screen.views()] == ["assistant", "user"]  # her greeting, then the line
        saved = app.store.branch(app.chat_screen.session.chat.id)
        assert [m.content for m in saved if m.role == "user"] == ["有人吗？"] and saved[0].role == "assistant"

        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker), what="the model picker")
        await pilot.pause()
        models = app.screen.query_one("#models", OptionList)
        ids = [models.get_option_at_index(i).id for i in range(models.option_count)]
        assert ids[0] == BUNDLED and str(tmp_path / "models" / "gemma.gguf") in ids
        broken_option = models.get_option_at_index(ids.index(str(broken)))
        assert broken_option.disabled and "not a usable GGUF" in str(broken_option.prompt)
        models.highlighted = ids.index(str(tmp_path / "models" / "gemma.gguf"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.models.engine is not None and not app.models.loading,
                       what="the model to load")
        assert app.models.engine.style == "script"
        await pilot.press("ctrl+r")  # reply to the message that waited
        await wait_for(pilot, lambda: app.chat_screen.turns_done == 2, what="the reply")
        assert [v.role for v in app.chat_screen.views()] == ["assistant", "user", "assistant"]
        assert app.chat_screen.views()[-1].content


@pytest.mark.slow
async def test_a_typed_path_that_is_not_a_model_keeps_the_current_one(characters_dir, tmp_path, engine):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker), what="the model picker")
        await pilot.pause()
        app.screen.query_one("#model-path").focus()
        app.screen.query_one("#model-path").value = str(tmp_path / "missing.gguf")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.models.error, what="the error")
        assert "not found" in app.models.error and app.models.engine is engine
        await send(pilot, app, "你好")
        assert app.chat_screen.views()[-1].content


@pytest.mark.slow
async def test_an_unreadable_database_falls_back_to_memory_with_a_message(characters_dir, tmp_path, engine):
    db = tmp_path / "s.db"
    db.write_bytes(os.urandom(4096))
    app = make_app(characters_dir, db, engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        assert app.store.path == ":memory:"
        assert any("damaged" in p for p in app.problems)
        await send(pilot, app, "你好")
        assert [v.role for v in app.chat_screen.views()] == ["assistant", "user", "assistant"]


async def test_get_more_characters_downloads_from_the_hub_with_progress_and_lists_them(tmp_path, hub, monkeypatch):
    monkeypatch.delenv("HARUHI_CHARACTERS", raising=False)
    app = make_app(None, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")  # a fresh install
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="the picker")
        await pilot.pause()
        options = app.screen.query_one("#characters", OptionList)
        assert len(app.library.characters) == 7 and "haruhi" in app.library.characters  # the starters
        options.highlighted = options.option_count - 1
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, GetCharactersScreen), what="the hub catalogue")
        await pilot.pause()
        catalogue = app.screen.query_one("#hub-characters", OptionList)
        assert catalogue.option_count == 127
        haruhi = next(o for o in map(catalogue.get_option_at_index, range(127)) if o.id == "haruhi")
        assert haruhi.disabled and "[bundled]" in str(haruhi.prompt)
        await pilot.press(*"Luna")
        assert catalogue.get_option_at_index(catalogue.highlighted).id == "Luna"
        await pilot.press("enter")
        get = app.screen
        await wait_for(pilot, lambda: get.added == ["Luna"], what="the download")
        assert "Luna Lovegood added" in str(get.query_one("#get-status").render())
        assert get.query_one("#get-progress").progress == 1.0
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="back to the picker")
        options = app.screen.query_one("#characters", OptionList)
        luna = options.get_option_at_index(options.highlighted)
        assert luna.id == "Luna" and "[downloaded]" in str(luna.prompt)
        await pilot.press("enter")  # and she talks first
        await wait_for(pilot, lambda: app.chat_screen.session is not None, what="the chat with Luna")
        assert app.chat_screen.session.messages[0].content.startswith("Scene")
