"""`haruhi chat` with two or more characters: a group chat, the prompt shown for the chosen speaker, @Name and
--speaker picking who answers, replies named after their speaker. Real parts: the bundled Gemma 3 270M on
llama.cpp (greedy, short replies), the real 春日 with two card-style friends, the sessions database."""

from __future__ import annotations

import pytest
from group_characters import KOIZUMI_PROMPT, NAGATO_PROMPT, make_group_characters
from typer.testing import CliRunner

from haruhi_tui.cli import app
from haruhi_tui.store import Store, default_db_path

GREEDY = ("--temperature", "0", "--max-tokens", "12")


@pytest.fixture
def chat(tmp_path, characters_dir):
    """``haruhi chat ARGS`` in this process on 春日, 长门 (nagato) and 古泉 (koizumi)."""
    folder = make_group_characters(tmp_path, characters_dir)
    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(app, ["chat", "--characters", str(folder), *args], input=input)

    return run


@pytest.mark.slow
def test_show_prompt_with_two_characters_is_the_chosen_speakers_prompt(chat):
    named = chat("--character", "haruhi", "--character", "nagato", "--show-prompt", "长门，你在读什么？")
    assert named.exit_code == 0, named.output
    assert "the prompt for 长门 (of 春日, 长门)" in named.stderr
    assert named.stdout.startswith(NAGATO_PROMPT.replace("{{user}}", "阿虚"))  # 长门's system block
    assert named.stdout.rstrip("\n").endswith("阿虚:「长门，你在读什么？」\n长门:「")  # her line to say
    assert "Role prompt" in named.stderr and "prompt tokens" in named.stderr

    picked = chat("--character", "haruhi", "--character", "nagato", "--speaker", "春日", "--show-prompt",
                  "长门，你在读什么？")
    assert picked.exit_code == 0, picked.output
    assert "the prompt for 春日" in picked.stderr and picked.stdout.rstrip("\n").endswith("\n春日:「")
    assert NAGATO_PROMPT[:10] not in picked.stdout
    assert not default_db_path().exists()  # --show-prompt writes nothing

    stranger = chat("--character", "haruhi", "--character", "nagato", "--speaker", "古泉", "--show-prompt", "hi")
    assert stranger.exit_code != 0 and "古泉 is not in this chat: pick one of 春日, 长门" in stranger.output
    assert "Traceback" not in stranger.output


@pytest.mark.slow
def test_a_group_chat_in_the_shell_answers_as_the_one_addressed_and_goes_on(chat):
    first = chat("--character", "haruhi", "--character", "nagato", "--character", "koizumi", *GREEDY,
                 "@古泉 你好")
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("古泉: ") and first.stdout.strip() != "古泉:"
    again = chat("--character", "koizumi", "--character", "nagato", "--character", "haruhi", *GREEDY,
                 "--show-prompt", "然后呢？")  # the same three, any order: the same chat goes on
    assert again.exit_code == 0, again.output
    assert "the prompt for 春日" in again.stderr  # nobody named: in turn, round from 古泉 to 春日
    assert "阿虚:「@古泉 你好」" in again.stdout and KOIZUMI_PROMPT not in again.stdout
    store = Store(default_db_path())
    try:
        (chat_row,) = store.chats()
        assert [m.character for m in store.chat_members(chat_row.id)] == ["haruhi", "nagato", "koizumi"]
        assert [(m.role, m.character) for m in store.branch(chat_row.id)] == [
            ("assistant", "nagato"), ("user", ""), ("assistant", "koizumi")]
    finally:
        store.close()
    single = chat("--character", "haruhi", "--show-prompt", "你好")  # 春日's own chat is another one
    assert single.exit_code == 0 and "@古泉" not in single.stdout
