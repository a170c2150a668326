"""Evaluating a chat's next prompt while the user is still typing the line it ends with.

A follow-up turn normally only evaluates its new tail, but a change of topic brings new scenes into the
system block, and everything after the first scene that changed (other scenes, the whole history) must be
evaluated again: seconds on a small CPU. Done while the line is typed, that cost is mostly gone by Enter.
The prompt is built exactly as the reply will build it, so llama.cpp's cache holds the reply's prompt up
to where the line still differs; the warmed prompt's scene order becomes the chat's ``scene_order``, so
the next prompt keeps the scenes that stay in the same places. A line that changes the topic has its new
scenes told beside it while the system block keeps the last reply's (``hold_scenes``): the history stays
cached, and a scene that changes at the line's last keystrokes costs only itself and the line at Enter.
:func:`settle` moves them into the system block while the reply is read (the next line's warm-up would too).

In a group chat the prompt is the speaker's (:mod:`.group_chat`): a line is warmed up as the member who
will answer it only when that is the member the chat's prompt is built for now (the app sets that after each
reply); a line addressed to another member gets no head start.

A line still being typed picks scenes only once it names a topic (:func:`~haruhi_tui.core.persona.names_a_topic`):
a half-typed word shares a character with some scene by chance, and evaluating that scene would push the
chat's own scenes out of the cache for nothing.
"""

from __future__ import annotations

from typing import Callable

from haruhi_tui.core.engine import Engine
from haruhi_tui.core.persona import names_a_topic
from haruhi_tui.store import Message

from .chat import ChatSession, ContextSnapshot
from .group_chat import GroupSession


def draft_query(draft: str) -> str:
    """What scenes are picked for while a line is typed: the line once it names a topic, else nothing (the
    chat's scenes stay)."""
    return draft if names_a_topic(draft) else ""


def warm(session: ChatSession, engine: Engine, draft: str,
         stop: Callable[[], bool] | None = None) -> tuple[ContextSnapshot, int] | None:
    """Evaluate the prompt ``draft`` would get as the chat's next line. Gives way to any reply and to ``stop()``
    (:meth:`Engine.prefill`). Returns the prompt and how many of its tokens were evaluated now (the rest
    was cached already), or None when there is nothing to do (no text, or a reply is on its way)."""
    text = draft.strip()
    leaf = session.leaf
    if not text or (leaf is not None and leaf.role == "user"):
        return None
    typed = Message(0, session.chat.id, leaf.id if leaf else None, "user", text)
    branch = [*session.messages, typed]
    if isinstance(session, GroupSession) and session.next_speaker(branch).folder != session.speaker.folder:
        return None  # the line goes to another member: the prompt would be theirs (the speaker is not ours to set)
    context = session.build_context(engine, branch, query=draft_query(text), hold_scenes=True)
    if session.leaf is leaf:  # no reply started meanwhile (it sets its own order)
        session.note_evaluated(context.prompt, warm_up=True)
    return context, engine.prefill(context.text, stop)


def settle(session: ChatSession, engine: Engine, stop: Callable[[], bool] | None = None) -> int:
    """After a reply whose line told its scenes beside it (:mod:`.held_scenes`), evaluate the start of the next
    prompt, those scenes in the system block and the reply in the history, while the reply is read: the next
    line then adds only itself. Gives way as :func:`warm` does. Returns how many tokens it evaluated (0: the
    scenes were in place)."""
    last = session.last_context
    if last is None or last.prompt.system_scene_ids == last.prompt.scene_ids or session.can_reply() \
            or isinstance(session, GroupSession):  # a group's next prompt is the next speaker's
        return 0
    context = session.build_context(engine, query="")  # no line yet: the chat's scenes stay
    session.note_evaluated(context.prompt, warm_up=True)
    return engine.prefill(context.text, stop)


def scenes_for(session: ChatSession, engine: Engine, draft: str) -> set[str]:
    """The scenes :func:`warm` would put in the prompt for ``draft`` (cheap: no prompt is built)."""
    chosen = session.builder(engine).select_scenes(draft_query(draft.strip()), sticky_ids=session.chat.scene_ids)
    return {scene.scene_id for scene in chosen}
