"""More ways to move a chat on, as SillyTavern offers them: continue the last reply, let the model draft the
user's next line (impersonate), delete a message; and the chat's own sampling settings. Which summary a
prompt carries: :mod:`.memory`.

:class:`ChatTurns` is a part of :class:`~haruhi_tui.services.chat.ChatSession` (a mixin): it works on the
session's branch, store and prompt building; :meth:`ChatTurns._stream_into` is the one streaming loop that
saves a reply (new or continued) while it streams.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from typing import Any, Callable

from haruhi_tui.core import harmony
from haruhi_tui.core.engine import Engine, Sampling
from haruhi_tui.core.harmony import Delta
from haruhi_tui.core.persona import Turn
from haruhi_tui.core.prompt_format import SCRIPT_CLOSE, SCRIPT_OPEN, Conversation, render_text
from haruhi_tui.store import Message, StoreError

#: What a chat or harmony model is asked when it writes the user's next line (SillyTavern's impersonation prompt).
IMPERSONATE = ("[Write {user}'s next line in this conversation with {character}, as {user} would say it: one "
               "short line in {user}'s voice, nothing said or done by {character}.]")
TEMPERATURE_RANGE = (0.0, 2.0)
MAX_TOKENS_RANGE = (16, 4096)


class ChatTurns:
    """Continue, impersonate, delete a message, sampling settings (see the module docstring)."""

    def continue_reply(self, engine: Engine, *, on_delta: Callable[[Message, Delta], None] | None = None,
                       cancel: threading.Event | None = None, sampling: Sampling | None = None,
                       save_interval: float = 0.5) -> Message:
        """Extend the last reply: the model goes on from the reply's last word, and what it writes is added to
        the same message (saved as it streams, like a reply). A finished reply may get nothing more."""
        reply = self.leaf
        if reply is None or reply.role != "assistant":
            raise ValueError("nothing to continue: the last message is not the character's")
        context = self.build_context(engine, self.messages[:-1])
        prefill = f"{harmony.CHANNEL}final{harmony.MESSAGE}" if engine.style == "harmony" else ""
        self._save(reply, status="incomplete")
        self.last_context = context
        self._stream_into(reply, engine, context, context.text + prefill + reply.content, sampling=sampling,
                          cancel=cancel, on_delta=on_delta, save_interval=save_interval, before=reply.content,
                          analysis_before=reply.analysis)
        return reply

    def _stream_into(self, reply: Message, engine: Engine, context: Any, prompt: str, *,
                     sampling: Sampling | None, cancel: threading.Event | None,
                     on_delta: Callable[[Message, Delta], None] | None, save_interval: float, before: str = "",
                     analysis_before: str = "") -> None:
        """Stream the model's answer to ``prompt`` into ``reply`` (after its text ``before``: a continued
        reply), saved every ``save_interval`` seconds (``context``: the prompt's ContextSnapshot, which gets the
        generation's stats); it ends ``complete``, ``stopped`` (``cancel`` was set)
        or ``error``, with the generation's stats."""
        final: list[str] = []
        analysis: list[str] = []

        def texts() -> tuple[str, str]:
            text = before + "".join(final)
            thought = "\n".join(x for x in (analysis_before, "".join(analysis).strip()) if x)
            return text, thought

        last_save = time.monotonic()
        status = "complete"
        try:
            for delta in engine.stream(prompt, sampling or self.settings.sampling(), cancel=cancel):
                (final if delta.channel == "final" else analysis).append(delta.text)
                if on_delta is not None:
                    on_delta(reply, delta)
                if time.monotonic() - last_save >= save_interval:
                    text, thought = texts()
                    self._save(reply, content=text, analysis=thought)
                    last_save = time.monotonic()
            if engine.last_stats.stop_reason == "cancelled":
                status = "stopped"
        except BaseException:
            status = "error"
            raise
        finally:
            stats = engine.last_stats
            context.stats = stats
            text, thought = texts()
            self._save(reply, content=text.rstrip() if before else text.strip(), analysis=thought, status=status,
                       stats=stats.as_dict())

    def impersonate(self, engine: Engine, *, cancel: threading.Event | None = None,
                    sampling: Sampling | None = None, on_delta: Callable[[str], None] | None = None) -> str:
        """The user's next line as the model would write it, for the user to edit before sending; nothing is
        stored. A base model continues the play script on the user's name; a chat or harmony model is asked."""
        prompt = self.build_context(engine).prompt
        user = self.settings.user_name
        if engine.style == "script":
            conv = Conversation.from_prompt(prompt)
            text = render_text(conv, "script", add_generation_prompt=False).rstrip("\n") + f"\n{user}:{SCRIPT_OPEN}"
        else:
            ask = Turn("user", IMPERSONATE.format(user=user, character=self.talking_with()), "")
            conv = Conversation(prompt.system, (*prompt.turns, ask), prompt.character)
            text = engine.render(conv, reasoning_effort="low")
        out: list[str] = []
        for delta in engine.stream(text, sampling or self.settings.sampling(), cancel=cancel):
            if delta.channel == "final":
                out.append(delta.text)
                if on_delta is not None:
                    on_delta(delta.text)
        return clean_line("".join(out), user)

    def talking_with(self) -> str:
        """Who the user talks with, as the impersonation prompt names them (a group chat names every member)."""
        return self.character.name

    def delete_message(self, message_id: int) -> None:
        """Delete a message and everything after it (its replies and their branches). The chat then shows the
        message's nearest other version, if it has one, else the messages before it."""
        index = self._index(message_id)
        if message_id < 0:
            raise ValueError("that message is not saved yet: try again in a moment")
        siblings = [m.id for m in self.store.siblings(message_id)]
        at = siblings.index(message_id)
        others = siblings[:at][-1:] + siblings[at + 1:at + 2]
        parent = self.messages[index - 1].id if index > 0 else None
        leaf = self.store.latest_leaf(others[0]) if others else parent
        self.store.delete_message(message_id, leaf)
        self.messages = self.store.branch(self.chat.id, leaf) if leaf is not None else []
        self.chat.leaf_id = leaf
        if not any(m.id == self._window_start for m in self.messages):
            self._window_start = None
        try:
            saved = self.store.chat(self.chat.id)  # a summary of deleted turns is gone with them
            self.chat.summary, self.chat.summary_upto = saved.summary, saved.summary_upto
        except StoreError:
            pass

    def set_sampling(self, *, temperature: float | None = None, max_tokens: int | None = None) -> None:
        """This chat's temperature and reply length (stored with the chat); a value out of range is refused."""
        changes: dict[str, Any] = {}
        if temperature is not None:
            low, high = TEMPERATURE_RANGE
            if not low <= temperature <= high:
                raise ValueError(f"temperature goes from {low:g} to {high:g}, not {temperature:g}")
            changes["temperature"] = float(temperature)
        if max_tokens is not None:
            low, high = MAX_TOKENS_RANGE
            if not low <= max_tokens <= high:
                raise ValueError(f"reply length goes from {low} to {high} tokens, not {max_tokens}")
            changes["max_tokens"] = int(max_tokens)
        for key, value in changes.items():
            setattr(self.settings, key, value)
        if "max_tokens" in changes:
            self._builders.clear()  # the prompt's budgets leave room for the reply
        self.store.update_chat(self.chat.id, settings=asdict(self.settings))


def clean_line(text: str, user: str) -> str:
    """One line the user could have typed: no ``name:「…」`` wrapping, no stray markers."""
    line = harmony.strip_special_tokens(text).strip().split("\n", 1)[0].strip()
    for prefix in (f"{user}:", f"{user}："):
        if line.startswith(prefix):
            line = line[len(prefix):].strip()
    if line.startswith(SCRIPT_OPEN):
        line = line[1:]
    return line.split(SCRIPT_CLOSE, 1)[0].strip()
