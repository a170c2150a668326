"""Export a chat as Markdown, JSONL, or a ShareGPT sample in the dataset builder's format.

A ShareGPT export is built by the same persona builder as ``haruhi data build`` (role prompt plus
scenes retrieved for the conversation), so a user's best chats drop straight into training with
``haruhi data build --extra chat.json``. Markdown and JSONL parse back into the same turns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from haruhi_tui.core.characters import Character
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import atomic_open, write_text
from haruhi_tui.core.persona import PersonaBuilder, Turn
from haruhi_tui.core.prompt_format import Conversation, to_messages
from haruhi_tui.core.sharegpt import Sample, write_samples
from haruhi_tui.services.chat import ChatSession

FORMATS = ("markdown", "jsonl", "sharegpt")
_MD_TURN = re.compile(r"^\*\*(?P<speaker>.+?)\*\*(?P<role> \(you\))?: (?P<text>.*)$")


@dataclass(frozen=True)
class ChatRecord:
    """What an export needs to know about a chat (the store hands this over)."""

    title: str
    character: Character
    turns: tuple[Turn, ...]
    model: str = ""


def format_for(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".md":
        return "markdown"
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "sharegpt"
    raise HaruhiError(f"unknown export format for {Path(path).name}: "
                      "use .md (Markdown), .jsonl (JSONL) or .json (ShareGPT)")


def to_markdown(chat: ChatRecord) -> str:
    lines = [f"# {chat.title}", "", f"*{chat.character.name}* · model `{chat.model or 'unknown'}`", ""]
    for turn in chat.turns:
        mark = " (you)" if turn.role == "user" else ""
        text = turn.text.replace("\n", "\n    ")
        lines.append(f"**{turn.speaker}**{mark}: {text}")
        lines.append("")
    return "\n".join(lines)


def parse_markdown(text: str) -> list[Turn]:
    """Turns back from :func:`to_markdown` output (continuation lines are indented four spaces)."""
    turns: list[Turn] = []
    for line in text.splitlines():
        match = _MD_TURN.match(line)
        if match:
            role = "user" if match.group("role") else "assistant"
            turns.append(Turn(role, match.group("text"), match.group("speaker")))
        elif line.startswith("    ") and turns:
            last = turns[-1]
            turns[-1] = Turn(last.role, last.text + "\n" + line[4:], last.speaker)
    return turns


def to_jsonl_rows(chat: ChatRecord) -> list[dict[str, Any]]:
    return [{"role": t.role, "speaker": t.speaker, "content": t.text, "character": chat.character.name,
             "model": chat.model} for t in chat.turns]


def parse_jsonl(text: str) -> list[Turn]:
    rows = map(json.loads, filter(str.strip, text.splitlines()))
    return [Turn(row["role"], row["content"], row["speaker"]) for row in rows]


def to_sharegpt(chat: ChatRecord, builder: PersonaBuilder | None = None) -> Sample:
    """One training sample: the persona system prompt for this conversation, then its turns."""
    turns = alternate(chat.turns)
    while turns and turns[-1].role != "assistant":
        turns.pop()  # a sample must end with the character speaking
    while turns and turns[0].role != "user":
        turns.pop(0)
    if not turns:
        raise HaruhiError("this chat has no reply from the character yet: nothing to export as training data")
    builder = builder or PersonaBuilder(chat.character)
    query = "\n".join(t.text for t in turns if t.role == "user")
    prompt = builder.build(turns[:-1], None, query=query)
    prompt_turns = list(prompt.turns)
    conv = Conversation(prompt.system, (*prompt_turns, turns[-1]), chat.character.name)
    return Sample(to_messages(conv), chat.character.name, f"chat:{chat.title}")


def export_chat(chat: ChatRecord, path: str | Path, builder: PersonaBuilder | None = None) -> Path:
    """Write ``chat`` to ``path`` in the format its suffix names, atomically."""
    target = Path(path)
    kind = format_for(target)
    if kind == "markdown":
        write_text(target, to_markdown(chat))
    elif kind == "jsonl":
        with atomic_open(target) as fh:
            for row in to_jsonl_rows(chat):
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        write_samples(target, [to_sharegpt(chat, builder)])
    return target


def export_session(session: ChatSession, path: str | Path) -> Path:
    """Write a chat's current branch to ``path`` (format by suffix): what the app's Export chat does."""
    speakers = {"user": session.settings.user_name, "assistant": session.character.name}
    turns = tuple(Turn(m.role, m.content, speakers[m.role])  # type: ignore[arg-type]
                  for m in session.messages if m.role in speakers and m.content.strip())
    return export_chat(ChatRecord(session.title, session.character, turns, Path(session.chat.model).name), path)


def alternate(turns: Sequence[Turn]) -> list[Turn]:
    """Merge consecutive turns of the same role, so exports alternate user/assistant as datasets need."""
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            last = merged[-1]
            merged[-1] = Turn(last.role, last.text + "\n" + turn.text, last.speaker)
        else:
            merged.append(turn)
    return merged
