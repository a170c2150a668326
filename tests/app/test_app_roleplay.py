"""Role-play depth in the app, through its pilot: personas, world info, the author's note, SillyTavern chats in and
out, and the context view (F2) showing every role-play block with its token count, cut note and why world info
fired. The character is card-like (tests/support/card_character.py): a lorebook, a depth prompt, post-history
instructions and a described usual partner."""

from __future__ import annotations

import json

import pytest
from app_support import SIZE, make_app, pick_character, send, wait_for
from card_character import ST_WORLD_INFO, make_card_character
from st_chat_sample import HEADER, MESSAGES, write_st_chat
from textual.command import CommandPalette
from textual.widgets import DataTable, Input, OptionList, Static, TextArea

from haruhi_tui.app.screens.authors_note import AuthorsNoteDialog
from haruhi_tui.app.screens.cards import ExportChatDialog, PathDialog
from haruhi_tui.app.screens.context import ContextScreen
from haruhi_tui.app.screens.dialogs import ConfirmDialog
from haruhi_tui.app.screens.persona import PersonaDialog, PersonaScreen
from haruhi_tui.app.screens.world_info import WorldInfoScreen
from haruhi_tui.core.paths import data_dir

NOTE = "{{char}}今天心情特别好。"


@pytest.fixture
def card_characters(tmp_path):
    """A characters folder with one card-like character, 春日 (folder haruhi_card)."""
    make_card_character(tmp_path / "characters")
    return tmp_path / "characters"


async def palette(pilot, name: str) -> None:
    """Run a command of the command palette by its name, as a user does."""
    app = pilot.app
    await pilot.press("ctrl+p")
    await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="the palette")
    await pilot.press(*name)
    await pilot.pause(0.5)
    await pilot.press("enter")


def text_of(widget) -> str:
    return str(widget.render())


def title(app) -> str:
    return text_of(app.chat_screen.query_one("#chat-title", Static))


@pytest.mark.slow
async def test_personas_are_picked_added_edited_and_deleted_and_the_chat_shows_who_you_play(card_characters,
                                                                                             tmp_path):
    app = make_app(card_characters, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi_card")
        session = app.chat_screen.session
        session.add_user_message("你好")
        assert "you: 阿虚" in title(app)
        await palette(pilot, "Persona")
        await wait_for(pilot, lambda: isinstance(app.screen, PersonaScreen), what="the persona screen")
        await pilot.pause()
        screen = app.screen
        listed = screen.query_one("#personas", OptionList)
        first = str(listed.get_option_at_index(0).prompt)
        assert "阿虚" in first and "the character's default" in first and "阿虚是春日的同班同学" in first  # macros read

        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, PersonaDialog), what="the persona dialog")
        await pilot.pause()
        await pilot.press("ctrl+s")  # no name: refused in the dialog
        assert isinstance(app.screen, PersonaDialog)
        assert "needs a name" in text_of(app.screen.query_one("#persona-problem"))
        app.screen.query_one("#persona-name", Input).value = "Alice"
        app.screen.query_one("#persona-description", TextArea).text = "{{user}}是转学生，想加入{{char}}的社团。"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen, what="back on the persona screen")
        described = "{{user}}是转学生，想加入{{char}}的社团。"
        assert [(p.name, p.description) for p in app.store.personas()] == [("Alice", described)]
        assert listed.get_option_at_index(listed.highlighted).id == str(app.store.personas()[0].id)
        await pilot.press("enter")  # play Alice in this chat
        await pilot.pause()
        alice = app.store.personas()[0]
        assert app.store.chat(session.chat.id).persona_id == alice.id and session.settings.user_name == "Alice"
        assert "Alice (a stored persona)" in text_of(screen.query_one("#persona-now"))
        assert "Alice是转学生，想加入春日的社团。" in session.build_prompt().system

        await pilot.press("e")  # edit: renamed, and the chat follows the new name
        await wait_for(pilot, lambda: isinstance(app.screen, PersonaDialog), what="the edit dialog")
        await pilot.pause()
        assert app.screen.query_one("#persona-name", Input).value == "Alice"
        app.screen.query_one("#persona-name", Input).value = "Alicia"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen, what="back on the persona screen")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat_screen, what="the chat")
        await pilot.pause()
        assert "you: Alicia" in title(app)
        # the greeting, then your line with your name, as sent
        assert [v.speaker for v in app.chat_screen.views()] == ["春日", "Alicia"]
        assert app.store.chat(session.chat.id).settings["user_name"] == "Alicia"

        await palette(pilot, "Persona")
        await wait_for(pilot, lambda: isinstance(app.screen, PersonaScreen), what="the persona screen")
        await pilot.pause()
        await pilot.press("down", "d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="the confirmation")
        await pilot.click("#yes")
        await wait_for(pilot, lambda: not app.store.personas(), what="the deletion")
        assert session.persona.name == "Alicia" and not session.persona.description  # the name stays, alone
        assert "a name only" in text_of(app.screen.query_one("#persona-now"))
        await pilot.press("home", "enter")  # back to the character's default
        await pilot.pause()
        assert session.persona.name == "阿虚" and "爱吐槽" in session.persona.description
        await pilot.press("escape")
        await wait_for(pilot, lambda: "you: 阿虚" in title(app), what="the title")


@pytest.mark.slow
async def test_world_info_lists_the_characters_book_and_attaches_imports_and_detaches(card_characters, tmp_path):
    app = make_app(card_characters, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi_card")
        session = app.chat_screen.session
        await palette(pilot, "World info")
        await wait_for(pilot, lambda: isinstance(app.screen, WorldInfoScreen), what="the world info screen")
        await pilot.pause()
        screen = app.screen
        own = text_of(screen.query_one("#own-book"))
        assert "春日的世界 · 3 entries" in own and "棒球大赛: 棒球" in own and "长门的秘密: 长门 + 书, 读书" in own
        assert "孤岛合宿: 孤岛 (at depth 1)" in own
        assert "No reply yet" in text_of(screen.query_one("#fired"))

        await pilot.press("i")  # import a SillyTavern world-info file: stored and attached
        await wait_for(pilot, lambda: isinstance(app.screen, PathDialog), what="the path dialog")
        await pilot.pause()
        app.screen.query_one("#path", Input).value = str(tmp_path / "missing.json")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.problems, what="the refusal")
        assert "lorebook not found" in app.problems[-1] and not app.store.lorebooks()
        await pilot.press("i")
        await wait_for(pilot, lambda: isinstance(app.screen, PathDialog), what="the path dialog")
        await pilot.pause()
        app.screen.query_one("#path", Input).value = str(ST_WORLD_INFO)
        await pilot.press("enter")
        await wait_for(pilot, lambda: session.lore_attachments, what="the attachment")
        attached = screen.query_one("#attached", OptionList)
        assert "haruhi_world_info · 12 entries · stored" in str(attached.get_option_at_index(0).prompt)
        assert [a.name for a in app.store.chat_lorebooks(session.chat.id)] == ["haruhi_world_info"]
        session.add_user_message("今天SOS团去哪？")
        assert "SOS团是春日在北高创立的社团" in session.build_prompt().system

        attached.focus()
        await pilot.press("d")  # detach: the book stays stored, listed to attach again
        await wait_for(pilot, lambda: not session.lore_attachments, what="the detach")
        assert "SOS团是春日在北高创立的社团" not in session.build_prompt().system
        stored = screen.query_one("#stored", OptionList)
        assert "haruhi_world_info" in str(stored.get_option_at_index(0).prompt)
        stored.focus()
        await pilot.press("enter")  # attach the stored one again
        await wait_for(pilot, lambda: session.lore_attachments, what="the attachment")

        book = tmp_path / "station.json"
        book.write_text(json.dumps({"entries": {"0": {"uid": 0, "key": ["车站"], "content": "集合地点是车站前。"}}},
                                   ensure_ascii=False), encoding="utf-8")
        await pilot.press("f")  # a file used as it is
        await wait_for(pilot, lambda: isinstance(app.screen, PathDialog), what="the path dialog")
        await pilot.pause()
        app.screen.query_one("#path", Input).value = str(book)
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(session.lore_attachments) == 2, what="the file")
        assert f"file {book}" in str(attached.get_option_at_index(1).prompt)
        session.add_user_message("车站见")
        assert "集合地点是车站前。" in session.build_prompt().system
        await pilot.press("escape")
        assert app.screen is app.chat_screen
    reopened = app.store.chat_lorebooks(session.chat.id)
    assert [(a.name, a.path) for a in reopened] == [("haruhi_world_info", ""), ("station.json", str(book))]


@pytest.mark.slow
async def test_a_sillytavern_chat_imports_shows_its_swipes_and_exports_the_same_messages(card_characters, tmp_path):
    source = write_st_chat(tmp_path / "春日 - 2025-05-02@19h41m07s.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user_name": "阿虚"}\n{"mes": "hi"\n', encoding="utf-8")
    app = make_app(card_characters, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi_card")
        started = app.chat_screen.session.chat.id
        await palette(pilot, "Import SillyTavern chat")
        await wait_for(pilot, lambda: isinstance(app.screen, PathDialog), what="the path dialog")
        await pilot.pause()
        app.screen.query_one("#path", Input).value = str(bad)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.problems, what="the refusal")
        assert "bad.jsonl line 2 is not JSON" in app.problems[-1] and len(app.store.chats()) == 1

        await palette(pilot, "Import SillyTavern chat")
        await wait_for(pilot, lambda: isinstance(app.screen, PathDialog), what="the path dialog")
        await pilot.pause()
        app.screen.query_one("#path", Input).value = str(source)
        await pilot.press("enter")
        screen = app.chat_screen
        await wait_for(pilot, lambda: screen.session.chat.id != started, what="the imported chat")
        await pilot.pause()
        assert [v.content for v in screen.views()] == [m["mes"] for m in MESSAGES]
        assert [v.speaker for v in screen.views()][:2] == ["春日", "阿虚"] and "you: 阿虚" in title(screen.app)
        assert screen.views()[2].analysis == "阿虚又在问废话。"  # reasoning is the reply's thinking

        await pilot.press("alt+up")  # the last reply: version 1 of its 2 swipes
        assert "selected 1/2" in text_of(screen.query_one("#status"))  # version 1 of 2
        await pilot.press("alt+right")
        await wait_for(pilot, lambda: screen.views()[-1].content == "迟到的人请大家喝咖啡！", what="the other swipe")
        assert "version 2 of 2" in text_of(screen.query_one("#status"))
        await pilot.press("alt+left")
        await wait_for(pilot, lambda: screen.views()[-1].content == MESSAGES[-1]["mes"], what="the first swipe")

        app.export_chat()
        await wait_for(pilot, lambda: isinstance(app.screen, ExportChatDialog), what="the export dialog")
        await pilot.pause()
        path_box = app.screen.query_one("#path", Input)
        await pilot.press("down", "down", "down")  # Markdown, JSONL, ShareGPT, SillyTavern
        written = data_dir() / "exports" / f"chat-{screen.session.chat.id}.st.jsonl"
        assert path_box.value == str(written)
        await pilot.press("up")
        assert path_box.value.endswith(f"chat-{screen.session.chat.id}.json")  # our own formats stay
        await pilot.press("down", "enter")
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, written.exists, what="the SillyTavern chat")
    lines = [json.loads(line) for line in written.read_text(encoding="utf-8").splitlines()]
    assert lines == [HEADER, *MESSAGES]  # the same messages, swipes, reasoning and dates back


@pytest.mark.slow
async def test_the_context_view_shows_persona_world_info_and_notes_with_counts(engine, card_characters, tmp_path):
    app = make_app(card_characters, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi_card")
        session = app.chat_screen.session
        alice = app.store.add_persona("Alice", "{{user}}是转学生，想加入{{char}}的社团。")
        session.set_persona(alice.id)
        await palette(pilot, "Author's note")
        await wait_for(pilot, lambda: isinstance(app.screen, AuthorsNoteDialog), what="the note dialog")
        await pilot.pause()
        app.screen.query_one("#note-text", TextArea).text = NOTE
        depth = app.screen.query_one("#note-depth", Input)
        depth.value = "1001"
        await pilot.press("ctrl+s")  # out of range: refused in the dialog
        assert isinstance(app.screen, AuthorsNoteDialog)
        assert "0 to 1000" in text_of(app.screen.query_one("#note-problem"))
        depth.value = "3"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is app.chat_screen, what="the chat")
        stored = app.store.chat(session.chat.id)
        assert (stored.authors_note, stored.note_depth) == (NOTE, 3)

        await send(pilot, app, "今天做什么？")  # no key of the lorebook: no world info
        blocks = await _context_rows(pilot, app)
        assert [kind for kind, *_ in blocks] == ["role", "persona", "scenes", "history", "character_note",
                                                 "authors_note", "message", "post_history"]  # history: the greeting
        await pilot.press("escape")

        await send(pilot, app, "我们去打棒球吧")
        sent = session.last_context
        blocks = await _context_rows(pilot, app)
        kinds = [kind for kind, *_ in blocks]
        assert kinds == ["role", "persona", "scenes", "lore", "history", "character_note", "authors_note",
                         "message", "post_history"]
        titles = {kind: title for kind, title, _, _ in blocks}
        assert titles["persona"] == "Persona: Alice" and titles["lore"] == "World info (1)"
        assert titles["authors_note"] == "Author's note (depth 3)"
        assert titles["character_note"] == "Character's note (depth 2)"
        for (kind, block_title, tokens, cut), block in zip(blocks, sent.prompt.blocks):
            assert tokens == str(block.tokens) == str(engine.count_tokens(block.text)) and cut == (block.cut or "—")
        screen = app.screen
        lore_cell = str(screen.query_one("#blocks", DataTable).get_row_at(kinds.index("lore"))[0]).splitlines()
        assert lore_cell == ["World info (1)", "  棒球大赛 (春日的世界): key “棒球”"]  # entry and key
        lore = next(b for b in sent.prompt.blocks if b.kind == "lore")
        assert lore.text.endswith("春日带SOS团参加过社区棒球大赛，还让Alice当了四棒。")
        rendered = screen.query_one("#rendered", TextArea).text
        first_line = rendered.index("Alice:「今天做什么？」")
        assert rendered.index("（春日今天心情特别好。）") < first_line  # depth 3: before the first of three turns
        assert "Alice是转学生，想加入春日的社团。" in rendered and rendered.endswith("春日:「")
        await pilot.press("escape")

        await palette(pilot, "World info")  # and the world info screen says what fired on this reply
        await wait_for(pilot, lambda: isinstance(app.screen, WorldInfoScreen), what="the world info screen")
        await pilot.pause()
        fired = text_of(app.screen.query_one("#fired"))
        assert "1 entry went into the prompt" in fired and "棒球大赛 (春日的世界): key “棒球”" in fired


async def _context_rows(pilot, app) -> list[tuple[str, str, str, str]]:
    """F2's table: (kind, title, tokens, cut) per block."""
    await pilot.press("f2")
    await wait_for(pilot, lambda: isinstance(app.screen, ContextScreen), what="the context view")
    await pilot.pause()
    table = app.screen.query_one("#blocks", DataTable)
    return [(row.value, str(title).splitlines()[0], tokens, cut)
            for i, row in enumerate(table.rows) for title, tokens, cut in [table.get_row_at(i)]]


@pytest.mark.slow
async def test_a_card_imports_beside_a_configured_character_of_its_name_and_its_warnings_show(card_characters,
                                                                                             tmp_path):
    card = tmp_path / "newer.json"
    book = {"entries": [{"keys": ["棒球"], "content": "SOS团打过棒球。", "enabled": True, "insertion_order": 100},
                        {"keys": ["空"], "content": 5, "enabled": True, "insertion_order": 100}]}
    card.write_text(json.dumps({"spec": "chara_card_v3", "spec_version": "3.0", "data": {
        "name": "haruhi_card", "description": "{{char}}是SOS团团长。", "first_mes": "我对普通人没有兴趣！",
        "character_book": book}}, ensure_ascii=False), encoding="utf-8")
    app = make_app(card_characters, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await pick_character(pilot, app, "haruhi_card")
        await palette(pilot, "Import character card")
        await wait_for(pilot, lambda: isinstance(app.screen, PathDialog), what="the path dialog")
        await pilot.pause()
        box = app.screen.query_one("#path", Input)
        assert "Character Card V2/V3 .json/.png/.charx" in str(box.placeholder)
        box.value = str(card)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.library.imported, what="the import")
        assert app.library.imported == {"haruhi_card_card"}  # the configured haruhi_card keeps its name
        assert (data_dir() / "characters" / "haruhi_card_card" / "system_prompt.txt").is_file()
        warned = [n.message for n in app._notifications if n.severity == "warning"]
        assert any("1 lorebook entry without text skipped" in m for m in warned), warned
