"""Long-term memory of a chat: the rolling summary of turns the history window no longer holds.

Pinned facts need no logic beyond the store: they are passed to the persona builder as they are.
The summary is written by the chat's own model. When the history window leaves turns out, those
turns (with the summary so far) are folded into a new summary with a short summarization prompt:
a system instruction and the transcript for chat/harmony models, a plain "Summary:" continuation for
a base model that only continues text (the script style).
"""

from __future__ import annotations

import threading
from typing import Sequence

from haruhi_tui.core.engine import Engine, Sampling
from haruhi_tui.core.persona import Turn
from haruhi_tui.core.prompt_format import Conversation

INSTRUCTION = (
    "You keep the memory of a role-play conversation. Write a short summary in plain sentences, "
    "third person: who did and said what, facts learned about the people, promises, open questions. "
    "Keep everything from the earlier summary that still matters. No quotes, no lists, at most {words} words."
)
SCRIPT_CUE = "Summary of the conversation above, in plain sentences:"
PARAGRAPH_END = "\n\n"


def transcript(turns: Sequence[Turn]) -> str:
    return "\n".join(t.as_line() for t in turns if t.text.strip())


def summary_prompt(engine: Engine, turns: Sequence[Turn], previous: str, character: str, words: int = 120) -> str:
    """The summarization prompt for ``engine``'s style (see the module docstring)."""
    earlier = f"Earlier summary: {previous.strip()}\n\n" if previous.strip() else ""
    if engine.style == "script":
        return (f"A conversation with {character}.\n\n{earlier}Conversation:\n{transcript(turns)}\n\n{SCRIPT_CUE}\n")
    text = f"{earlier}Conversation with {character}:\n{transcript(turns)}\n\nWrite the new summary."
    conv = Conversation(INSTRUCTION.format(words=words), (Turn("user", text, ""),), "Memory")
    return engine.render(conv, reasoning_effort="low")


def clean_summary(text: str) -> str:
    """The first paragraph, without a repeated cue or stray quote marks a base model likes to add."""
    text = text.strip()
    if text.startswith(SCRIPT_CUE):
        text = text[len(SCRIPT_CUE):].strip()
    text = text.split(PARAGRAPH_END, 1)[0].strip()
    return text.strip("「」\"' ")


def summarize(engine: Engine, turns: Sequence[Turn], previous: str, character: str, *, max_tokens: int = 160,
              cancel: threading.Event | None = None) -> str:
    """Fold ``turns`` into ``previous``: a new summary, greedy (a memory should not be creative).

    A base model runs on past the summary; the stream is stopped at the first blank line after some text.
    """
    prompt = summary_prompt(engine, turns, previous, character, words=max(30, max_tokens * 2 // 3))
    sampling = Sampling(temperature=0.0, repeat_penalty=1.1, max_tokens=max_tokens)
    stop = threading.Event()
    out: list[str] = []
    for delta in engine.stream(prompt, sampling, cancel=stop):
        if delta.channel != "final":
            continue
        out.append(delta.text)
        so_far = "".join(out).lstrip()
        if PARAGRAPH_END in so_far or (cancel is not None and cancel.is_set()):
            stop.set()
    summary = clean_summary("".join(out))
    if not summary:
        return previous.strip()
    return summary
