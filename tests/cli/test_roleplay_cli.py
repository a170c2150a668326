"""Role-play depth from the shell: `haruhi personas`, and `haruhi chat --show-prompt` listing every role-play
block (persona, world info with the key that fired each entry, the character's and the author's notes,
post-history instructions) with its token count, for a saved chat that has them. Real parts: the bundled Gemma
3 270M's tokenizer on llama.cpp, the sessions database the app uses, a card-like character."""

from __future__ import annotations

import pytest
from card_character import ST_WORLD_INFO, make_card_character
from typer.testing import CliRunner

from haruhi_tui.cli import app
from haruhi_tui.services.roleplay import import_lorebook
from haruhi_tui.store import Store, default_db_path


@pytest.fixture
def haruhi(tmp_path):
    """``haruhi ARGS`` in this process, with a characters folder of one card-like character (haruhi_card)."""
    characters = make_card_character(tmp_path / "characters").parent
    runner = CliRunner()

    def run(*args: str):
        extra = ["--characters", str(characters)] if args[0] == "chat" else []
        return runner.invoke(app, [*args, *extra])

    return run


def test_personas_are_added_listed_and_removed(haruhi):
    assert "no personas yet" in haruhi("personas", "list").stderr
    added = haruhi("personas", "add", "Alice", "--description", "{{user}}是转学生。")
    assert added.exit_code == 0 and "added persona Alice" in added.stderr
    updated = haruhi("personas", "add", "Alice", "-d", "{{user}}是转学生，想加入{{char}}的社团。")
    assert "updated persona Alice" in updated.stderr
    listed = haruhi("personas", "list")
    assert "Alice" in listed.stdout and "想加入{{char}}的社团" in listed.stdout
    missing = haruhi("personas", "remove", "Bob")
    assert missing.exit_code == 1 and missing.stderr.strip() == \
        "error: no persona named 'Bob': `haruhi personas list` shows them"
    assert haruhi("personas", "remove", "Alice").exit_code == 0
    assert Store(default_db_path()).personas() == []


@pytest.mark.slow
def test_show_prompt_lists_every_roleplay_block_of_the_saved_chat(haruhi):
    assert haruhi("personas", "add", "Alice", "-d", "{{user}}是转学生，想加入{{char}}的社团。").exit_code == 0
    store = Store(default_db_path())
    chat = store.create_chat("haruhi_card", "春日", title="春日", settings={"user_name": "阿虚"})
    store.update_chat(chat.id, authors_note="{{char}}今天心情特别好。", note_depth=1)
    store.attach_lorebook(chat.id, lorebook_id=import_lorebook(store, ST_WORLD_INFO).id)
    store.close()

    quiet = haruhi("chat", "--persona", "Alice", "--show-prompt", "今天做什么？")
    assert quiet.exit_code == 0, quiet.output
    assert "Persona: Alice" in quiet.stderr and "World info (1)" in quiet.stderr
    assert "舞台 (haruhi_world_info): constant" in quiet.stderr and "棒球" not in quiet.stderr  # no key came up
    assert "Alice是转学生，想加入春日的社团。" in quiet.stdout
    for block in ("Character's note (depth 2)", "Author's note (depth 1)", "Post-history instructions"):
        assert block in quiet.stderr

    shown = haruhi("chat", "--persona", "Alice", "--show-prompt", "我们去打棒球吧，SOS团全员参加")
    assert shown.exit_code == 0, shown.output
    table = shown.stderr
    assert "World info (4)" in table
    assert "棒球大赛 (春日的世界): key “棒球”" in table  # the character's own book
    assert "SOS团 (haruhi_world_info): key “SOS团”" in table  # the book attached to the chat
    assert "棒球大赛 (haruhi_world_info): key “棒球”, not “输”" in table
    assert "舞台 (haruhi_world_info): constant" in table
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in table.splitlines()
            if line.startswith("│") and line.split("│")[2].strip().isdigit()}
    for block in ("Role prompt", "Persona: Alice", "World info (4)", "Character's note (depth 2)",
                  "Author's note (depth 1)", "Current message", "Post-history instructions"):
        assert int(rows[block]) > 0, block
    text = shown.stdout
    assert "春日带SOS团参加过社区棒球大赛，还让Alice当了四棒。" in text
    assert text.index("（春日今天心情特别好。）") < text.index("Alice:「我们去打棒球吧")  # depth 1: before your line
    assert text.rstrip("\n").endswith("（只用一两句话回答Alice。）\n春日:「")
    saved = Store(default_db_path())
    assert [m.content for m in saved.branch(chat.id)] == []  # --show-prompt wrote nothing
    assert saved.chat(chat.id).persona_id is None
