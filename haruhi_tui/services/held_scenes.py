"""A change of topic told beside its line: the chat's prompts while a line changes the scenes.

A line that changes the topic brings new scenes into the system block, and everything after the first scene
that changed, the whole history, must be evaluated again. The app evaluates the line's prompt while it is
typed (:mod:`.warmup`), but a line's scenes can change at its last keystrokes (a half-typed word ranks other
scenes), too late for the history to be evaluated before Enter: on the project's 2-core machine ~500 tokens,
about a second. So a line that changes the topic keeps the system block llama.cpp holds, the last reply's,
and its new scenes are told beside it, before the line, the way notes are: every chosen scene is in the
prompt, the history stays cached, and a late change costs only the changed scene and the line. The next
line's prompt puts them in the system block; its warm-up evaluates that while it is typed.

Holding is chosen by what llama.cpp holds, not by rule: each recent system-block order (the last reply's and
the warm-ups') is tried, and the one that leaves the fewest tokens to evaluate wins when it saves at least
:data:`HOLD_SCENES_MIN_SECONDS` at the engine's measured prompt speed. A chat without a warm-up (the command
line) never holds: there it would only move the cost to the next turn, and add to it.

:class:`ChatHeldScenes` is a part of :class:`~haruhi_tui.services.chat.ChatSession` (a mixin).
"""

from __future__ import annotations

from haruhi_tui.core.engine import Engine
from haruhi_tui.core.persona import PersonaPrompt
from haruhi_tui.store import Message

#: A change of scenes llama.cpp has not evaluated when a prompt is built is told beside the line for that turn
#: when that saves at least this much prompt time.
HOLD_SCENES_MIN_SECONDS = 0.25
HELD_ORDERS = 4  # system-block scene orders remembered as candidates to hold (the last reply's, the warm-ups')


class ChatHeldScenes:
    """The scene orders sent to llama.cpp, and the choice to hold one (see the module docstring)."""

    def _init_held_scenes(self) -> None:
        self.evaluated_orders: list[list[str]] = []  # recent system-block scene orders sent to llama.cpp, newest last
        self.warmed_up = False  # a warm-up evaluated the line being typed since the last reply

    def _held_scenes(self, engine: Engine, branch: list[Message] | None, query: str | None,
                     prompt: PersonaPrompt, text: str) -> tuple[PersonaPrompt, str]:
        """``prompt``, or the same turn with the system block's scenes held as llama.cpp has them and the new
        scenes told beside the line, when the line changed the scenes too late for the new system block (and
        the whole history after it) to be evaluated while it was typed, and holding them saves at least
        :data:`HOLD_SCENES_MIN_SECONDS` of prompt time. Every chosen scene is in the prompt either way. Only a
        line that changes the topic holds: the next line's prompt puts the scenes in place (its warm-up
        evaluates that while it is typed), so a chat does not keep re-telling them; and only where a warm-up
        runs (the app), since without one holding only moves the cost to the next turn, and adds to it."""
        own = {i for i in self.chat.scene_ids if i.startswith(self.character.folder + "/")}  # a group: the speaker's
        if engine.prompt_rate is None or set(prompt.scene_ids) == own:
            return prompt, text
        plain_left = best_left = engine.uncached_tokens(text)
        best = (prompt, text)
        for order in reversed(self.evaluated_orders):
            if set(order) == set(prompt.system_scene_ids):
                continue
            held = self.build_prompt(engine, branch, query=query, held_scene_ids=order, probe=True)
            if held.system_scene_ids != order:  # scenes of another character (a group chat's other member)
                continue
            held_text = self._render(engine, held)
            left = engine.uncached_tokens(held_text)
            if left < best_left:
                best_left, best = left, (held, held_text)
        if (plain_left - best_left) / engine.prompt_rate < HOLD_SCENES_MIN_SECONDS:
            return prompt, text
        return best

    def note_evaluated(self, prompt: PersonaPrompt, *, warm_up: bool = False) -> None:
        """``prompt`` goes to llama.cpp (a reply or a warm-up): its scenes become the order later prompts keep,
        and a candidate to hold (:meth:`_held_scenes`)."""
        self.warmed_up = warm_up
        order = list(prompt.system_scene_ids)
        self.scene_order = order + [i for i in prompt.scene_ids if i not in order]  # then those told beside the line
        if order:
            self.evaluated_orders = [o for o in self.evaluated_orders if o != order][-(HELD_ORDERS - 1):] + [order]
