"""Long-term memory of a chat: the rolling summary of turns the history window no longer holds.

Pinned facts need no logic beyond the store: they are passed to the persona builder as they are.
The summary is written by the chat's own model. When the history window leaves turns out, those
turns (with the summary so far) are folded into a new summary with a short summarization prompt:
a system instruction and the transcript for chat/harmony models, a plain "Summary:" continuation for
a base model that only continues text (the script style).

:class:`ChatMemory` is mixed into :class:`~haruhi_tui.services.chat.ChatSession`: its pins and summary.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Sequence

from haruhi_tui.core.engine import Engine, Sampling
from haruhi_tui.core.persona import PersonaBuilder, Turn
from haruhi_tui.core.prompt_format import Conversation
from haruhi_tui.store import Pin, Store, StoreError

if TYPE_CHECKING:
    from haruhi_tui.core.characters import Character
    from haruhi_tui.store import Chat, Message

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


class ChatMemory:
    """A chat's long-term memory: pinned facts and the rolling summary (a part of ``ChatSession``)."""

    store: Store
    chat: "Chat"
    character: "Character"
    messages: "list[Message]"
    pins: list[Pin]

    # provided by ChatSession
    def _error(self, message: str) -> None: ...
    def builder(self, engine: Engine | None) -> PersonaBuilder: ...
    def _history(self, upto: "list[Message]", style: str, builder: PersonaBuilder) -> tuple[list[Turn], int]: ...
    def _turn(self, m: "Message", style: str) -> Turn: ...

    @property
    def summary(self) -> str:
        """The rolling summary if it belongs to this branch (or the user wrote it by hand)."""
        upto = self.chat.summary_upto
        if upto is None or any(m.id == upto for m in self.messages):
            return self.chat.summary
        return ""

    def summary_to_send(self, left_out: int) -> str:
        """The summary a prompt carries: the model's stands in for the turns the history window left out (none
        left out, none sent); one the user wrote by hand is always sent."""
        return self.summary if left_out or self.chat.summary_upto is None else ""

    def set_summary(self, text: str) -> None:
        """The user's own edit of the summary (it keeps covering the same turns)."""
        upto = self.chat.summary_upto if self.summary else None
        self.store.set_summary(self.chat.id, text, upto)
        self.chat.summary, self.chat.summary_upto = text.strip(), upto

    def fold_history(self, engine: Engine, *, cancel: threading.Event | None = None) -> bool:
        """Fold the turns the history window has left out (and the summary does not cover yet) into the
        rolling summary, written by ``engine``. True if the summary changed."""
        builder = self.builder(engine)
        spoken = [m for m in self.messages if m.role in ("user", "assistant") and m.content.strip()]
        _, left_out = self._history(self.messages, engine.style, builder)
        dropped = spoken[:left_out]
        previous = self.summary
        upto = self.chat.summary_upto if previous else None
        ids = [m.id for m in dropped]
        if upto is not None and upto in ids:
            dropped = dropped[ids.index(upto) + 1:]
        elif upto is not None:
            dropped = []  # the summary already reaches past the window's start
        if not dropped:
            return False
        text = summarize(engine, [self._turn(m, engine.style) for m in dropped], previous, self.character.name,
                         max_tokens=max(48, min(200, builder.budget.summary // 2)), cancel=cancel)
        if not text or text == previous:
            return False
        self.chat.summary, self.chat.summary_upto = text, dropped[-1].id
        try:
            self.store.set_summary(self.chat.id, text, dropped[-1].id)
        except StoreError as exc:
            self._error(str(exc))  # the summary is in memory; the chat goes on
        return True

    def add_pin(self, text: str) -> Pin:
        pin = self.store.add_pin(self.chat.id, text)
        self.pins.append(pin)
        return pin

    def edit_pin(self, pin_id: int, text: str) -> None:
        self.store.update_pin(pin_id, text)
        for p in self.pins:
            if p.id == pin_id:
                p.text = text.strip()

    def remove_pin(self, pin_id: int) -> None:
        self.store.delete_pin(pin_id)
        self.pins = [p for p in self.pins if p.id != pin_id]
