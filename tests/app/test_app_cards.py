"""Cards, chat export formats and model downloads, driven through the real app's pilot (no generation)."""

from __future__ import annotations

import pytest
from app_support import SIZE, make_app, open_download_dialog, pick_character, send, wait_for
from textual.widgets import Input, OptionList

from haruhi_tui.app.screens.cards import ExportChatDialog, PathDialog
from haruhi_tui.app.screens.download import DownloadDialog
from haruhi_tui.app.screens.pick import GET_MORE, CharacterPicker, ModelPicker
from haruhi_tui.core.cards import export_card, read_card
from haruhi_tui.core.characters import load_character
from haruhi_tui.core.paths import data_dir
from haruhi_tui.services.export import parse_jsonl


def _option_ids(options: OptionList) -> list[str]:
    return [options.get_option_at_index(i).id for i in range(options.option_count)]


async def _submit(pilot, screen_type, text: str, selector: str = "#path") -> None:
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, screen_type), what=screen_type.__name__)
    await pilot.pause()
    box = app.screen.query_one(selector, Input)
    box.value = text
    box.focus()
    await pilot.press("enter")


@pytest.mark.slow
async def test_an_imported_card_appears_in_the_picker_and_a_malformed_one_is_a_message(characters_dir, tmp_path):
    card = export_card(load_character(characters_dir / "haruhi"), tmp_path / "haruhi.png")
    bad = tmp_path / "bad.json"
    bad.write_text('{"spec": "chara_card_v2", "data": ', encoding="utf-8")
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="the picker")
        await pilot.pause()
        configured = len(app.library.characters)
        await pilot.press("f5")
        await _submit(pilot, PathDialog, str(card))
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker) and app.library.imported
                       and app.screen.query_one("#characters", OptionList).option_count > configured + 1,
                       what="the import in the picker")
        imported = next(iter(app.library.imported))
        assert imported == "haruhi_card"  # the configured haruhi keeps its name: no duplicates
        assert (data_dir() / "characters" / imported / "system_prompt.txt").is_file()
        options = app.screen.query_one("#characters", OptionList)
        ids = _option_ids(options)
        assert len(ids) == len(set(ids)) == configured + 2 and "haruhi" in ids and ids[-1] == GET_MORE
        assert "[imported]" in str(options.get_option_at_index(ids.index(imported)).prompt)
        assert app.library.characters[imported].name == app.library.characters["haruhi"].name == "春日"

        await pilot.press("f5")
        await _submit(pilot, PathDialog, str(bad))
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="back to the picker")
        assert any("bad.json" in p for p in app.problems)
        assert len(app.library.characters) == configured + 1
        await pilot.press(*"imported")
        assert _option_ids(options) == [imported, GET_MORE]
        await pilot.press("enter")  # the app kept running: the imported character is chosen and talks
        await wait_for(pilot, lambda: app.chat_screen.session is not None, what="the chat")
        assert app.chat_screen.session.character.folder == imported

        app.action_export_card()  # the current character, to exports/<folder>.png by default
        written = data_dir() / "exports" / f"{imported}.png"
        await wait_for(pilot, lambda: isinstance(app.screen, PathDialog), what="the export dialog")
        await pilot.pause()
        assert app.screen.query_one("#path", Input).value == str(written)
        await pilot.press("enter")
        await wait_for(pilot, written.exists, what="the card")
        assert read_card(written)["name"] == "春日"
        app.action_export_card()
        await _submit(pilot, PathDialog, str(bad / "x.png"))  # under a file: refused, in the app
        await wait_for(pilot, lambda: "cannot write" in app.problems[-1], what="the refusal")

    again = make_app(characters_dir, tmp_path / "s2.db", engine=None, model=tmp_path / "none.gguf")
    characters, marked, problem = again.library.read()
    assert marked == {imported} and not problem
    assert len({c.folder for c in characters}) == len(characters) == configured + 1


@pytest.mark.slow
async def test_chat_export_in_three_formats_and_an_unwritable_path_is_a_message(characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        await send(pilot, app, "凉宫同学，今天社团做什么？", wait=False)
        await wait_for(pilot, lambda: any(m.role == "user" for m in app.chat_screen.session.messages),
                       what="the stored message")
        app.export_chat()
        await wait_for(pilot, lambda: isinstance(app.screen, ExportChatDialog), what="the export dialog")
        await pilot.pause()
        path_box = app.screen.query_one("#path", Input)
        assert path_box.value == str(data_dir() / "exports" / f"chat-{app.chat_screen.session.chat.id}.md")
        await pilot.press("down")  # the format list sets the suffix
        assert path_box.value.endswith(".jsonl")
        await pilot.press("escape")
        for suffix in (".jsonl", ".md"):
            app.export_chat()
            await _submit(pilot, ExportChatDialog, str(tmp_path / f"out{suffix}"))
            await wait_for(pilot, lambda: (tmp_path / f"out{suffix}").exists(), what=f"the {suffix} file")
        turns = parse_jsonl((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
        greeting = app.chat_screen.session.messages[0].content  # she spoke first
        assert [(t.role, t.text) for t in turns] == [("assistant", greeting), ("user", "凉宫同学，今天社团做什么？")]
        assert "凉宫同学" in (tmp_path / "out.md").read_text(encoding="utf-8")
        app.export_chat()  # ShareGPT is training data: a chat without a reply is refused, one line
        await _submit(pilot, ExportChatDialog, str(tmp_path / "out.json"))
        await wait_for(pilot, lambda: app.problems, what="the refusal")
        assert "no reply from the character yet" in app.problems[-1] and not (tmp_path / "out.json").exists()

        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        before = set(tmp_path.rglob("*"))
        app.export_chat()
        await _submit(pilot, ExportChatDialog, str(blocker / "sub" / "chat.jsonl"))
        await wait_for(pilot, lambda: len(app.problems) > 1, what="the error")
        assert "cannot write" in app.problems[-1]
        assert set(tmp_path.rglob("*")) == before
        await pilot.press("f1")  # still alive
        assert type(app.screen).__name__ == "HelpScreen"


@pytest.mark.slow
async def test_download_dialog_shows_progress_then_the_model_is_in_the_picker(characters_dir, tmp_path, hub,  # noqa: F811
                                                                              monkeypatch):
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        dialog = await open_download_dialog(pilot, app)
        seen: list[str] = []
        original = dialog._progress
        monkeypatch.setattr(dialog, "_progress", lambda f, m: (seen.append(m), original(f, m)))
        await _submit(pilot, DownloadDialog, "haruhi/tiny-GGUF", "#repo")
        await wait_for(pilot, lambda: app.screen is not dialog, what="the download")
        target = data_dir() / "models" / "tiny-Q4_K_M.gguf"
        assert target.is_file() and target.stat().st_size == 300_000
        assert any(m.startswith("downloading tiny-Q4_K_M.gguf") for m in seen)
        app.action_pick_model()
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker), what="the model picker")
        await pilot.pause()
        assert str(target) in _option_ids(app.screen.query_one("#models", OptionList))
        await pilot.press("escape")

        app.action_download_model()  # Esc closes the dialog; the download goes on and says when it is done
        await wait_for(pilot, lambda: isinstance(app.screen, DownloadDialog), what="the download dialog")
        await pilot.pause()
        app.screen.query_one("#file", Input).value = "a-F16.gguf"
        await _submit(pilot, DownloadDialog, "haruhi/many-GGUF", "#repo")
        await pilot.press("escape")
        assert not isinstance(app.screen, DownloadDialog)
        await wait_for(pilot, (data_dir() / "models" / "a-F16.gguf").exists, what="the background download")
        await pilot.pause(0.2)
        assert not app.problems or "a-F16" not in app.problems[-1]

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        app.action_download_model()
        await _submit(pilot, DownloadDialog, "haruhi/other-GGUF", "#repo")
        await wait_for(pilot, lambda: app.problems, what="the offline message")
        assert "HF_HUB_OFFLINE is set" in app.problems[-1] and "\n" not in app.problems[-1]
        assert "HF_HUB_OFFLINE" in str(app.screen.query_one("#download-status").render())
