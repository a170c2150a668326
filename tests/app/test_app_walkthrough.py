"""What a role-play fan met driving the app through every README feature, each fixed with a test that shows it:
F4 editing a message selected long ago, a pending reply that looked like a crash, a mislabelled compare picker,
letters typed into the chat list turning into commands, Enter overtaking the character filter, a status that
said no model while the old one answered, a hand-written summary never sent, a thinking toast for a model that
never thinks, no version counter and a selection nobody could see."""

from __future__ import annotations

import threading

import pytest
from app_support import SIZE, make_app, pick_character, screen_text, send, wait_for
from textual.color import Color
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static, TextArea

from haruhi_tui.app.screens.pick import CharacterPicker, ModelPicker
from haruhi_tui.app.widgets import ChatList, PromptInput


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


@pytest.mark.slow
async def test_f4_after_a_new_line_edits_that_line_not_an_old_selection(engine, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        await send(pilot, app, "你好")
        await pilot.press("alt+up", "alt+up")  # your first line, selected (under her greeting)
        await pilot.pause()
        first_line = next(m for m in screen.session.messages if m.role == "user")
        assert screen.selected == first_line.id
        await send(pilot, app, "我们去车站吧")  # the conversation moves on
        count = len(screen.session.messages)
        assert screen.selected is None and not any(v.has_class("selected") for v in screen.views())
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, ModalScreen), what="the edit dialog")
        assert app.screen.query_one(Input).value == "我们去车站吧"  # the last line, not the old selection
        await pilot.press("escape")
        assert len(screen.session.messages) == count  # nothing moved into a branch

        await pilot.press("alt+up")
        await pilot.press("escape")  # Esc with no reply coming lets go of the selection
        assert screen.selected is None


@pytest.mark.slow
async def test_a_reply_on_its_way_says_it_is_coming_not_that_the_app_stopped(engine, characters_dir, tmp_path,
                                                                              monkeypatch):
    release = threading.Event()
    real_stream = engine.stream

    def slow_to_start(prompt, sampling=None, *, cancel=None, on_token=None):
        release.wait(timeout=60)  # a model still reading the prompt
        return real_stream(prompt, sampling, cancel=cancel, on_token=on_token)

    monkeypatch.setattr(engine, "stream", slow_to_start)
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        await send(pilot, app, "你好", wait=False)
        await wait_for(pilot, lambda: screen._reply_view is not None, what="the reply's view")
        await pilot.pause()
        note = str(screen.views()[-1].query_one(".note", Static).render())
        shown = screen_text(app)
        release.set()
        assert "incomplete" not in note and "stopped" not in shown, note
        assert "waiting" in note and "waiting" in shown
        await wait_for(pilot, lambda: screen.turns_done == 1, what="the reply")
        assert not screen.views()[-1].query_one(".note", Static).display


@pytest.mark.slow
async def test_compare_with_model_opens_a_picker_that_says_so(characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        app.action_pick_compare_model()
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker), what="the picker")
        await pilot.pause()
        shown = screen_text(app)
        assert "Compare with model" in shown and "Pick a model" not in shown
        assert "now: compare with" not in shown
        await pilot.press("escape")
        app.action_pick_model()
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker), what="the picker")
        await pilot.pause()
        assert "Pick a model" in screen_text(app)


@pytest.mark.slow
async def test_letters_typed_in_the_chat_list_go_to_the_message_box(characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        screen.session.add_user_message("第一个聊天")
        first = screen.session.chat.id
        await pilot.press("ctrl+n")
        await pick_character(pilot, app, "weixiaobao")
        screen.session.add_user_message("第二个聊天")

        await pilot.press("ctrl+b")  # the list has the focus; r r r (keys queued before a dialog opens)
        chats = screen.query_one(ChatList)
        assert chats.has_focus
        await pilot.press("r", "r", "r")
        await wait_for(pilot, lambda: isinstance(app.screen, ModalScreen), what="the rename dialog")
        await pilot.pause()
        assert sum(isinstance(s, ModalScreen) for s in app.screen_stack) == 1
        await pilot.press("escape")

        await pilot.press("ctrl+b", "ctrl+b")
        chats.highlighted = [chats.get_option_at_index(i).id for i in range(2)].index(str(first))
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ModalScreen), what="the delete question")
        await pilot.press("enter")  # Enter cancels: the focus is on Cancel
        assert first in [c.id for c in app.store.chats()]
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ModalScreen), what="the delete question")
        await pilot.press("y")
        await wait_for(pilot, lambda: first not in [c.id for c in app.store.chats()], what="the deletion")
        await pilot.pause()
        await pilot.press(*"read me")  # a sentence, after the deletion
        await pilot.pause()
        assert app.screen is screen and screen.query_one(PromptInput).value == "read me"

        await pilot.press("ctrl+b")  # in the list again: a letter that is not a key goes to the message box
        await pilot.press("w")
        assert screen.query_one(PromptInput).has_focus and screen.query_one(PromptInput).value.endswith("w")


@pytest.mark.slow
async def test_enter_overtaking_the_filter_opens_what_was_typed_and_empty_chats_are_not_kept(characters_dir,
                                                                                            tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="the picker")
        await pilot.pause()
        picker = app.screen
        await pilot.press(*"Harr")
        await pilot.pause()
        box = picker.query_one("#filter", Input)
        # Enter arrives while the list still shows the "Harr" matches (Dumbledore first): a busy machine
        picker.post_message(Input.Submitted(box, "Hermione"))
        await wait_for(pilot, lambda: app.chat_screen.session is not None, what="a chat")
        assert app.chat_screen.session.character.folder == "Hermione"
        unwanted = app.chat_screen.session.chat.id

        await pilot.press("ctrl+n")
        await pick_character(pilot, app, "haruhi")
        assert unwanted not in [c.id for c in app.store.chats()]  # nothing was said: not kept
        kept = app.chat_screen.session.chat.id
        app.chat_screen.session.add_user_message("你好")
        await pilot.press("ctrl+n")
        await pick_character(pilot, app, "weixiaobao")
        await pilot.press("ctrl+q")
    assert [c.id for c in app.store.chats()] == [kept]  # the last one was left empty too, at quit


@pytest.mark.slow
async def test_a_model_that_fails_to_load_leaves_the_old_one_answering_and_says_so(engine, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        app.load_model(str(tmp_path / "missing.gguf"))
        await wait_for(pilot, lambda: app.models.error, what="the error")
        await pilot.pause()
        status = str(app.chat_screen.query_one("#status", Static).render())
        assert "not loaded" not in status and engine.name in status
        assert engine.name in screen_text(app)


@pytest.mark.slow
async def test_a_summary_written_by_hand_is_sent(engine, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        session = app.chat_screen.session
        await pilot.press("f3")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "MemoryScreen", what="the memory screen")
        await pilot.pause()
        app.screen.query_one(TextArea).text = "阿虚昨天答应春日去找外星人。"
        await pilot.press("ctrl+s")
        await pilot.press("escape")
        await send(pilot, app, "今天做什么？")
        sent = session.last_context
        assert "summary" in [b.kind for b in sent.prompt.blocks] and "阿虚昨天答应春日去找外星人。" in sent.text


@pytest.mark.slow
async def test_thinking_toast_version_counter_and_a_visible_selection(engine, characters_dir, tmp_path):
    app = make_app(characters_dir, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi")
        screen = app.chat_screen
        await pilot.press("ctrl+t")
        assert "thinking shown" not in notifications(app) and any("does not think" in n for n in notifications(app))

        await send(pilot, app, "你好")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.turns_done == 2, what="the regenerated reply")
        await pilot.pause()
        speaker = str(screen.views()[-1].query_one(".speaker", Static).render())
        assert "2/2" in speaker

        await pilot.press("alt+up")
        await pilot.pause()
        selected, other = screen.views()[-1], screen.views()[0]
        assert selected.has_class("selected") and not other.has_class("selected")
        base = screen.styles.background
        assert distance(base + selected.styles.background, base + other.styles.background) > 60

        await pilot.press("escape", "f3")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "MemoryScreen", what="the memory screen")
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, ModalScreen), what="the pin dialog")
        app.screen.query_one(Input).value = "春日讨厌无聊"
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "MemoryScreen", what="back on memory")
        pins = app.screen.query_one("#pins", OptionList)
        for focus in (pins, app.screen.query_one(TextArea)):  # the pin stays marked when the summary has the focus
            focus.focus()
            await pilot.pause()
            highlight = pins.get_component_rich_style("option-list--option-highlighted").bgcolor
            assert highlight is not None
            assert distance(Color.from_rich_color(highlight), app.screen.styles.background) > 90, focus


def distance(a: Color, b: Color) -> int:
    return sum(abs(x - y) for x, y in zip(a.rgb, b.rgb))


CARD = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
    "name": "Mira", "description": "{{char}} keeps a lighthouse and talks to {{user}} about the sea.",
    "personality": "calm", "scenario": "A stormy night.", "first_mes": "Come in, {{user}}, the storm is near.",
    "mes_example": "<START>\n{{user}}: Is the light working?\n{{char}}: It has never failed me yet."}}


@pytest.mark.slow
async def test_a_chat_with_an_imported_card_still_names_the_character_after_a_restart(characters_dir, tmp_path):
    import json

    card = tmp_path / "mira.json"
    card.write_text(json.dumps(CARD), encoding="utf-8")
    db = tmp_path / "s.db"
    app = make_app(characters_dir, db, engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="the picker")
        character = app.import_card(card)
        await pilot.pause()
        await pick_character(pilot, app, character.folder)
        session = app.chat_screen.session
        session.add_user_message("Is the light working?")
        session.messages.append(session._insert(session.leaf, "assistant", "It has never failed me yet."))
        await pilot.press("ctrl+q")

    app = make_app(characters_dir, db, engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.chat_screen
        await wait_for(pilot, lambda: screen.session is not None, what="the chat, resumed")
        await pilot.pause()
        assert screen.session.character.name == "Mira"
        assert [v.speaker for v in screen.views()][-1] == "Mira"
        assert "Mira" in str(screen.query_one("#chat-title").render())
