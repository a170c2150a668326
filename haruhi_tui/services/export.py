"""Export a chat as Markdown, JSONL, or a ShareGPT sample in the dataset builder's format.

A ShareGPT export is built by the same persona builder as ``haruhi data build`` (role prompt plus
scenes retrieved for the conversation), so a user's best chats drop straight into training with
``haruhi data build --extra chat.json``. A record taken from a live chat (:func:`session_record`) carries
the prompt the chat itself built for its last reply (persona, world info, author's note and all), and the
sample is that prompt, so a fine-tune sees what the chat sends. Markdown and JSONL parse back into the
same turns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from haruhi_tui.core.characters import Character
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import atomic_open, write_text
from haruhi_tui.core.persona import PersonaBuilder, PersonaPrompt, Turn
from haruhi_tui.core.prompt_format import Conversation, to_messages
from haruhi_tui.core.sharegpt import Sample, write_samples
from haruhi_tui.services.chat import ChatSession

if TYPE_CHECKING:
    from haruhi_tui.core.engine import Engine

FORMATS = ("markdown", "jsonl", "sharegpt")
_MD_TURN = re.compile(r"^\*\*(?P<speaker>.+?)\*\*(?P<role> \(you\))?: (?P<text>.*)$")


@dataclass(frozen=True)
class ChatRecord:
    """What an export needs to know about a chat (the store hands this over)."""

    title: str
    character: Character
    turns: tuple[Turn, ...]
    model: str = ""
    prompt: PersonaPrompt | None = None  # the prompt the chat built for its last reply (see session_record)


def session_record(session: ChatSession, engine: "Engine | None" = None, *, with_prompt: bool = True) -> ChatRecord:
    """What to export of a live chat: its spoken turns and (``with_prompt``) the prompt it builds for its
    last reply with the chat's persona, lorebooks, author's note, pins and summary, counted with
    ``engine``'s tokenizer and budgets when given (the chat's model: then it is the prompt the chat sends),
    else estimated."""
    messages = session.messages
    last = max((i for i, m in enumerate(messages) if m.role == "assistant" and m.content.strip()), default=-1)
    prompt = None
    if with_prompt and last > 0 and any(m.role == "user" for m in messages[:last]):
        branch = messages[:last]
        while branch and branch[-1].role != "user":
            branch = branch[:-1]
        prompt = session.build_prompt(engine, branch, probe=True)
    model = Path(session.chat.model).name if session.chat.model else ""
    return ChatRecord(session.title, session.character, tuple(session.spoken_turns()), model, prompt)


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
    """One training sample: the persona system prompt for this conversation, then its turns (with the
    chat's own prompt for its last reply where the record has it)."""
    turns = _user_first(alternate(chat.turns))
    while turns and turns[-1].role != "assistant":
        turns.pop()  # a sample must end with the character speaking
    if not turns:
        raise HaruhiError("this chat has no reply from the character yet: nothing to export as training data")
    if chat.prompt is not None:
        system, prompt_turns = chat.prompt.system, _user_first(alternate(chat.prompt.turns))
    else:
        builder = builder or PersonaBuilder(chat.character)
        query = "\n".join(t.text for t in turns if t.role == "user")
        prompt = builder.build(turns[:-1], None, query=query)
        system, prompt_turns = prompt.system, list(prompt.turns)
    conv = Conversation(system, (*prompt_turns, turns[-1]), chat.character.name)
    return Sample(to_messages(conv), chat.character.name, f"chat:{chat.title}")


def _user_first(turns: list[Turn]) -> list[Turn]:
    while turns and turns[0].role != "user":
        turns.pop(0)  # a sample opens on a user turn (a greeting alone has nobody to answer)
    return turns


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


def export_session(session: ChatSession, path: str | Path, engine: "Engine | None" = None) -> Path:
    """Write a chat's current branch to ``path`` (format by suffix): what the app's Export chat does. A
    ShareGPT export carries the prompt the chat builds (see :func:`session_record`; pass the chat's
    ``engine`` so the budgets and token counts are the model's)."""
    record = session_record(session, engine, with_prompt=format_for(path) == "sharegpt")
    return export_chat(record, path)


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
