"""`haruhi chat`: one-shot replies, piped conversations, the exact prompt, resuming the app's chats, Ctrl-C,
one-line errors. Real parts: the bundled Gemma 3 270M on llama.cpp (greedy, short replies), the real
ChatHaruhi characters, the sessions database the app uses."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from haruhi_tui.cli import app
from haruhi_tui.core.characters import load_character
from haruhi_tui.store import Store, default_db_path

SUPPORT = Path(__file__).resolve().parents[1] / "support"
GREEDY = ("--temperature", "0", "--max-tokens", "16")


@pytest.fixture
def few_characters(characters_dir, tmp_path) -> Path:
    """A characters folder with three of the real characters (links): quicker to load than all 32."""
    folder = tmp_path / "characters"
    folder.mkdir()
    for name in ("haruhi", "Harry", "Hermione"):
        (folder / name).symlink_to(characters_dir / name, target_is_directory=True)
    return folder


@pytest.fixture
def chat(few_characters):
    """``haruhi chat ARGS`` in this process, on real characters; returns the click result."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(app, ["chat", "--characters", str(few_characters), *args], input=input)

    return run


def saved() -> list[tuple[int, str, str, str]]:
    """Every message in the sessions database: (chat id, role, status, content)."""
    store = Store(default_db_path())
    try:
        return [(c.id, m.role, m.status, m.content) for c in reversed(store.chats()) for m in store.branch(c.id)]
    finally:
        store.close()


@pytest.mark.slow
def test_one_message_one_reply_streamed_and_saved(chat):
    result = chat("--character", "haruhi", *GREEDY, "你好，今天社团做什么？")
    assert result.exit_code == 0, result.output
    reply = result.stdout.strip()
    assert reply and "\n" not in reply and "」" not in reply
    messages = saved()
    assert [(role, status) for _, role, status, _ in messages] == [("user", "complete"), ("assistant", "complete")]
    assert messages[0][3] == "你好，今天社团做什么？" and messages[1][3] == reply


@pytest.mark.slow
def test_piped_lines_are_answered_one_by_one_in_one_chat(chat):
    result = chat("--character", "haruhi", *GREEDY, input="你是谁？\n\n再见\n")
    assert result.exit_code == 0, result.output
    replies = result.stdout.strip().splitlines()
    messages = saved()
    assert len({chat_id for chat_id, *_ in messages}) == 1
    assert [(role, content) for _, role, _, content in messages if role == "user"] == [("user", "你是谁？"),
                                                                                       ("user", "再见")]
    assert replies == [content for _, role, _, content in messages if role == "assistant"]
    assert len(replies) == 2 and all(replies)


@pytest.mark.slow
def test_show_prompt_prints_the_exact_prompt_fast_and_generates_nothing(chat, characters_dir):
    haruhi = load_character(characters_dir / "haruhi")
    started = time.monotonic()
    result = chat("--character", "haruhi", "--persona", "Kyon", "--show-prompt", "今天做什么？")
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert took < 30, f"--show-prompt took {took:.1f} s"  # loads the model and counts tokens; no generation
    text = result.stdout
    assert haruhi.role_prompt.strip().splitlines()[0] in text  # the persona
    assert text.rstrip("\n").endswith("Kyon:「今天做什么？」\n春日:「")  # the play script, ready for the reply
    for block in ("Role prompt", "Classic scenes", "Current message"):
        assert block in result.stderr
    assert "prompt tokens" in result.stderr and "script" in result.stderr
    assert not default_db_path().exists()  # nothing written, not even an empty database


@pytest.mark.slow
def test_a_second_run_resumes_the_chat_and_no_save_or_new_keep_it_apart(chat):
    first = chat("--character", "haruhi", *GREEDY, "凉宫，今天社团做什么？")
    assert first.exit_code == 0, first.output
    reply = first.stdout.strip()

    shown = chat("--character", "春日", "--show-prompt", "然后呢？")  # by speaking name; the latest chat resumes
    assert shown.exit_code == 0, shown.output
    assert "凉宫，今天社团做什么？" in shown.stdout and reply in shown.stdout
    assert shown.stdout.index(reply) < shown.stdout.index("然后呢？")

    assert chat(*GREEDY, "--no-save", "然后呢？").exit_code == 0  # no --character: the latest chat
    assert len(saved()) == 2

    again = chat(*GREEDY, "然后呢？")
    assert again.exit_code == 0, again.output
    messages = saved()
    assert len(messages) == 4 and len({chat_id for chat_id, *_ in messages}) == 1
    assert [content for *_, content in messages][:2] == ["凉宫，今天社团做什么？", reply]

    fresh = chat("--character", "haruhi", "--new", "--show-prompt", "你好")
    assert "凉宫，今天社团做什么？" not in fresh.stdout


@pytest.mark.slow
def test_ctrl_c_mid_reply_stops_and_keeps_the_partial_reply_as_stopped(few_characters):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SUPPORT.parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, str(SUPPORT / "slow_cli_driver.py"), "chat", "--characters", str(few_characters),
         "--character", "haruhi", "--temperature", "0", "--max-tokens", "300", "给我讲讲SOS团的故事吧，越长越好"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0)  # unbuffered: read(1) takes one byte
    try:
        first = proc.stdout.read(1)  # the reply has started
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err_lines = err.decode().strip().splitlines()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert len(err_lines) == 1 and "stopped" in err_lines[0] and "Traceback" not in err.decode()
    printed = (first + out).decode().strip()
    with sqlite3.connect(default_db_path()) as db:
        rows = db.execute("SELECT role, status, content FROM messages ORDER BY id").fetchall()
    assert [(role, status) for role, status, _ in rows] == [("user", "complete"), ("assistant", "stopped")]
    assert rows[1][2] == printed and printed


def test_errors_are_one_line_with_what_to_do(chat, tmp_path):
    def fails(*args: str, expect: str) -> str:
        result = chat(*args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:"), result.output
        assert expect in lines[0] and "Traceback" not in result.output
        return lines[0]

    assert "haruhi" in fails("--character", "haruhii", "你好", expect="no character 'haruhii': did you mean")
    fails("--character", "haruhi", "--model", str(tmp_path / "nope.gguf"), "你好", expect="model not found")
    fails("--character", "haruhi", "--model", "qwen2.5-0.5b", "你好",
          expect="not downloaded yet: run `haruhi models get qwen2.5-0.5b`")
    fails("你好", expect="no chat to continue: pass --character NAME")
    fails("--character", "haruhi", "  ", expect="MESSAGE is empty")
    assert not default_db_path().exists() or saved() == []
