"""The main screen: a chat and what the user does in it — talk, stop, regenerate, edit and switch versions,
compare two models, look at the memory and the context.

The reply is generated in a thread worker (:meth:`ChatScreen.run_turn`) that drives the UI-free
:class:`~haruhi_tui.services.chat.ChatSession`; it posts the text back a few times a second (:class:`_DeltaBatcher`),
so the UI never waits on the model, the model rarely waits on the UI, and a stop key takes effect between two
tokens. While the user types, another worker evaluates the prompt the line would get (:meth:`ChatScreen.warm_up`).
What is on screen and the saved chats are :class:`~.chat_view.ChatView`'s.
"""

from __future__ import annotations

import threading
import time

from textual import on, work
from textual.binding import Binding
from textual.message import Message as TMessage

from haruhi_tui.app.services import Services
from haruhi_tui.app.widgets import MessageView, PromptInput
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services import warmup
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.store import Message

from .chat_view import ChatView
from .context import ContextScreen
from .dialogs import RenameDialog

WARM_DELAY = 0.05  # seconds a warm-up waits for more keys before it evaluates the line being typed


class ChatScreen(ChatView):
    BINDINGS = [
        Binding("escape", "stop", "Stop", tooltip="Stop the reply being written (it is kept, marked stopped)"),
        Binding("ctrl+r", "regenerate", "Retry", tooltip="A new reply to your last message (the old one is kept)"),
        Binding("ctrl+t", "toggle_thinking", "Think", tooltip="Show or hide the character's thinking (gpt-oss)"),
        Binding("f2", "context", "Context", tooltip="Exactly what the model was sent, block by block"),
        Binding("ctrl+n", "new_chat", "New", tooltip="A new chat: pick a character"),
        Binding("ctrl+o", "app.pick_model", "Model", tooltip="Pick a model: bundled, a local GGUF, or a path"),
        Binding("ctrl+b", "toggle_sidebar", "Chats", show=False, tooltip="Show or hide saved chats"),
        Binding("f1", "app.help", "Help", tooltip="This list"),
        Binding("f3", "memory", "Memory", show=False,
                tooltip="Memory: pinned facts and the summary of earlier turns"),
        Binding("ctrl+k", "compare", priority=True, description="Compare", show=False,
                tooltip="Your line answered by two models side by side; keep one"),
        Binding("alt+up", "select(-1)", priority=True, description="Select previous", show=False,
                tooltip="Select an earlier message"),
        Binding("alt+down", "select(1)", priority=True, description="Select next", show=False,
                tooltip="Select a later message"),
        Binding("f4", "edit", "Edit", show=False,
                tooltip="Edit the selected message (or your last); old one kept as a branch"),
        Binding("alt+left", "sibling(-1)", priority=True, description="Previous version", show=False,
                tooltip="Previous version (branch) of the selected message"),
        Binding("alt+right", "sibling(1)", priority=True, description="Next version", show=False,
                tooltip="Next version (branch) of the selected message"),
    ]

    class ReplyStarted(TMessage):
        def __init__(self, reply: Message) -> None:
            super().__init__()
            self.reply = reply

    class ReplyDelta(TMessage):
        """Text that arrived since the last update, as (channel, text) runs in order."""

        def __init__(self, message_id: int, pieces: list[tuple[str, str]]) -> None:
            super().__init__()
            self.message_id, self.pieces = message_id, pieces

    class TurnDone(TMessage):
        def __init__(self, reply: Message | None, error: str = "") -> None:
            super().__init__()
            self.reply, self.error = reply, error

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.cancel = threading.Event()
        self._draft = ""  # the line being typed, for the warm-up ("": nothing to evaluate)
        self._warm_lock = threading.Lock()  # guards _draft and _warming between the UI and the warm-up worker
        self._warming = False
        self._warm_stop = threading.Event()  # set on quit: the warm-up stops between two chunks
        self._reply_view: MessageView | None = None
        self.turns_done = 0
        self.submitted_at = 0.0  # perf_counter of the last Enter/ctrl+r: first-token latency as the user sees it
        self.selected: int | None = None  # id of the message the edit and version keys act on

    # -- talking ---------------------------------------------------------------------------------
    @on(PromptInput.Submitted, "#prompt")
    async def _submitted(self, event: PromptInput.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.session is None:
            self.notify("pick a character first (ctrl+n)", severity="warning")
            return
        if self.generating:
            self.notify("a reply is still coming: Esc stops it", severity="warning")
            return
        box = self.query_one(PromptInput)
        box.value = ""
        box.remember(text)
        user_view = MessageView("user", self.session.settings.user_name, text)
        await self.conversation.mount(user_view)
        self.conversation.anchor()
        self._begin()
        self.run_turn(text)

    @on(PromptInput.Changed, "#prompt")
    def _draft_changed(self, event: PromptInput.Changed) -> None:
        models = self.services.models
        usable = self.session is not None and not self.generating and models.ready
        with self._warm_lock:
            self._draft = event.value.strip() if usable else ""
            start = bool(self._draft) and not self._warming
            self._warming = self._warming or start
        if start:
            self.warm_up(self.session, models.engine)

    @work(thread=True, group="warm", exit_on_error=False)
    def warm_up(self, session: ChatSession, engine) -> None:
        """Evaluate the prompt of the line being typed (:func:`~haruhi_tui.services.warmup.warm`), then of the
        newest line typed since, until it has caught up. Typing on stops a prompt being evaluated only when the
        newest line gets other scenes (otherwise most of it is still to be had); Enter stops it, as any reply
        does."""
        done = ""
        try:
            while True:
                self._warm_stop.wait(WARM_DELAY)  # let a burst of keys land
                with self._warm_lock:
                    draft = self._draft
                    if not draft or draft == done or self.generating or session is not self.session \
                            or self._warm_stop.is_set():
                        self._warming = False
                        return
                scenes = warmup.scenes_for(session, engine, draft)
                seen = {draft: scenes}

                def stop() -> bool:
                    newest = self._draft
                    if self._warm_stop.is_set() or not newest:
                        return True
                    if newest not in seen:
                        seen[newest] = warmup.scenes_for(session, engine, newest)
                    return seen[newest] != scenes

                warmup.warm(session, engine, draft, stop)
                done = draft
        except Exception:  # noqa: BLE001 - only a head start: the reply itself reports what is wrong
            with self._warm_lock:
                self._warming = False

    def action_regenerate(self) -> None:
        if self.session is None or not self.session.messages:
            self.notify("nothing to regenerate yet", severity="warning")
            return
        if self.generating:
            self.notify("a reply is still coming: Esc stops it", severity="warning")
            return
        for view in reversed(self.views()):
            if view.role != "assistant":
                break
            view.remove()
        self._begin()
        self.run_turn(None)

    def action_stop(self) -> None:
        if self.generating:
            self.cancel.set()
            self.set_status("stopping…")

    def _begin(self) -> None:
        self.submitted_at = time.perf_counter()
        self.generating = True
        self.cancel = threading.Event()
        loaded = self.services.models.engine is not None
        self.set_status("thinking…" if loaded else "waiting for the model to load…")

    @work(thread=True, group="generate")
    def run_turn(self, text: str | None) -> None:
        """One turn in a worker thread: commit the user's line, wait for the model, stream the reply."""
        session, services, cancel = self.session, self.services, self.cancel
        assert session is not None
        reply: Message | None = None
        try:
            if text is not None:
                session.add_user_message(text)
            engine = services.models.wait(cancel)
            if engine is None:
                error = "" if cancel.is_set() else (
                    f"no model loaded ({services.models.error or 'pick one with ctrl+o'}); "
                    "your message is saved, ctrl+r replies once a model is ready")
                self.post_message(self.TurnDone(None, error))
                return

            batch = _DeltaBatcher(self)

            def started(m: Message) -> None:
                self.post_message(self.ReplyStarted(m))

            kwargs = dict(on_start=started, on_delta=batch.add, cancel=cancel, sampling=services.sampling,
                          save_interval=services.save_interval)
            reply = session.reply(engine, **kwargs) if text is not None else session.regenerate(engine, **kwargs)
            batch.flush()
            if not cancel.is_set() and reply.status == "complete":
                self._fold_memory(session, engine, cancel)
            self.post_message(self.TurnDone(reply))
        except (HaruhiError, ValueError) as exc:
            leaf = session.leaf if session.leaf and session.leaf.role == "assistant" else None
            self.post_message(self.TurnDone(leaf, str(exc)))
        except Exception as exc:  # the app keeps running whatever the model does
            self.post_message(self.TurnDone(None, f"generation failed: {type(exc).__name__}: {exc}"))

    def _fold_memory(self, session: ChatSession, engine, cancel: threading.Event) -> None:
        """After a reply: fold turns the history window left out into the rolling summary."""
        try:
            self.app.call_from_thread(self.set_status, "updating the chat's memory…")
            session.fold_history(engine, cancel=cancel)
        except (HaruhiError, ValueError) as exc:
            self.post_message(self.Problem(f"could not update the summary: {exc}"))

    @on(ReplyStarted)
    async def _reply_started(self, event: ReplyStarted) -> None:
        view = self._view_for(event.reply)
        self._reply_view = view
        await self.conversation.mount(view)
        self.conversation.anchor()
        self.set_status("replying… (Esc stops)")

    @on(ReplyDelta)
    def _reply_delta(self, event: ReplyDelta) -> None:
        if self._reply_view is not None:
            for channel, text in event.pieces:
                self._reply_view.append(channel, text)

    @on(TurnDone)
    async def _turn_done(self, event: TurnDone) -> None:
        self.generating = False
        view, self._reply_view = self._reply_view, None
        reply = event.reply
        try:
            if view is not None and reply is not None:
                await view.finish(reply.content, reply.analysis, reply.status, reply.id)
            if event.error:
                self.services.report(event.error, timeout=10)
                self.set_status(event.error)
            elif reply is not None:
                self.set_status(self.stats_line(reply))
            self.refresh_chats()
            self.update_title()
        finally:
            self.turns_done += 1  # last: the reply is on screen as it was saved

    def stats_line(self, reply: Message) -> str:
        s = reply.stats or {}
        if not s:
            return ""
        parts = [f"prompt {s.get('prompt_tokens', 0)} tok ({s.get('reused_tokens', 0)} cached)",
                 f"{s.get('generated_tokens', 0)} tok at {s.get('tokens_per_second', 0):.1f} tok/s"]
        if reply.status == "stopped":
            parts.append("stopped")
        return " · ".join(parts)

    async def stop_and_wait(self) -> None:
        """Stop a reply in progress and let it be saved as stopped, and any warm-up (on quit)."""
        self._warm_stop.set()
        if self.generating:
            self.cancel.set()
        await self.app.workers.wait_for_complete([w for w in self.app.workers if w.group in ("generate", "warm")])

    # -- memory, branches, compare -----------------------------------------------------------------
    def _refuse_while_generating(self) -> bool:
        if self.generating:
            self.notify("a reply is still coming: Esc stops it first (nothing is lost)", severity="warning")
            return True
        return False

    def action_memory(self) -> None:
        from .memory import MemoryScreen

        if self.session is None:
            self.notify("no chat yet", severity="warning")
            return
        self.app.push_screen(MemoryScreen(self.session, self.services.report))

    def action_select(self, step: int) -> None:
        views = [v for v in self.views() if v.message_id is not None and v.message_id > 0]
        if not views:
            return
        ids = [v.message_id for v in views]
        i = ids.index(self.selected) + step if self.selected in ids else (len(ids) - 1 if step < 0 else 0)
        i = max(0, min(len(ids) - 1, i))
        self._mark(ids[i])
        views[i].scroll_visible()
        if self.session is not None:
            n, count = self.session.alternatives(ids[i])
            self.set_status(f"selected: version {n} of {count} (F4 edits, alt+←/→ switches versions)")

    def _mark(self, message_id: int | None) -> None:
        self.selected = message_id
        for view in self.views():
            view.set_class(view.message_id == message_id and message_id is not None, "selected")

    def _target(self) -> int | None:
        """The selected message, else the last thing the user said."""
        if self.session is None:
            return None
        ids = [m.id for m in self.session.messages]
        if self.selected in ids:
            return self.selected
        return next((m.id for m in reversed(self.session.messages) if m.role == "user"), None)

    def action_edit(self) -> None:
        if self.session is None or self._refuse_while_generating():
            return
        target = self._target()
        if target is None:
            self.notify("nothing to edit yet", severity="warning")
            return
        session = self.session
        old = next(m for m in session.messages if m.id == target)

        async def done(text: str | None) -> None:
            if not text or text.strip() == old.content.strip():
                return
            try:
                msg = session.edit(target, text)
            except (HaruhiError, ValueError) as exc:
                self.services.report(str(exc))
                return
            await self.show_session(session)
            self._mark(msg.id)
            if msg.role == "user":
                self._begin()
                self.run_turn(None)
            else:
                self.set_status("reply edited: the old version is kept (alt+← shows it)")

        self.app.push_screen(RenameDialog(old.content, "Edit message (the old version stays as a branch)"), done)

    async def action_sibling(self, step: int) -> None:
        if self.session is None or self._refuse_while_generating():
            return
        target = self._target()
        if target is None:
            return
        try:
            shown = self.session.switch_sibling(target, step)
        except (HaruhiError, ValueError) as exc:
            self.services.report(str(exc))
            return
        if shown is None:
            self.notify("no other version that way", timeout=2)
            return
        await self.show_session(self.session)
        self._mark(shown.id)
        n, count = self.session.alternatives(shown.id)
        self.set_status(f"version {n} of {count}")

    async def action_compare(self) -> None:
        from .compare import CompareScreen

        services, session = self.services, self.session
        if session is None or self._refuse_while_generating():
            return
        if not services.models.ready:
            self.notify("the model is not loaded yet", severity="warning")
            return
        box = self.query_one(PromptInput)
        text = box.value.strip()
        if text:
            box.value = ""
            box.remember(text)
            try:
                session.add_user_message(text)
            except (HaruhiError, ValueError) as exc:
                self.services.report(str(exc))
                return
        elif not any(m.role == "user" for m in session.messages):
            self.notify("type a line first: ctrl+k sends it to both", severity="warning")
            return
        self.generating = True

        async def picked(reply_id: int | None) -> None:
            self.generating = False
            self.turns_done += 1
            if reply_id is not None:
                try:
                    session.switch_to(reply_id)
                except HaruhiError as exc:
                    self.services.report(str(exc))
            await self.show_session(session)

        runs = services.models.compare_runs(services.sampling)
        self.app.push_screen(CompareScreen(session, runs, services.report), picked)

    # -- views -----------------------------------------------------------------------------------
    def action_toggle_thinking(self) -> None:
        self.show_thinking = not self.show_thinking
        for view in self.views():
            view.set_thinking(self.show_thinking)
        self.notify("thinking shown" if self.show_thinking else "thinking hidden", timeout=2)

    def action_context(self) -> None:
        if self.session is None:
            self.notify("no chat yet", severity="warning")
            return
        ctx = self.session.last_context
        if ctx is not None:
            self.app.push_screen(ContextScreen(ctx))
            return
        self.preview_context()

    @work(thread=True, group="context")
    def preview_context(self) -> None:
        """Nothing sent yet in this run: show what the next prompt would hold."""
        engine = self.services.models.engine
        if engine is None or self.session is None:
            self.app.call_from_thread(self.notify, "the model is not loaded yet", severity="warning")
            return
        try:
            ctx = self.session.build_context(engine)
        except HaruhiError as exc:
            self.app.call_from_thread(self.services.report, str(exc))
            return
        self.app.call_from_thread(self.app.push_screen, ContextScreen(ctx, "Context the next reply would see"))


class _DeltaBatcher:
    """Groups streamed pieces into at most ~10 screen updates a second (the first one at once).

    llama.cpp decodes on every core, so each millisecond the UI spends on an update is taken from it; an
    update per token cost 8-15 ms of UI time a token (relayout and streaming Markdown), a third of a core at
    ~35 tokens/s. Ten plain-text updates a second read as a smooth stream and cost 3-4 % of a core.
    """

    INTERVAL = 0.1

    def __init__(self, screen: ChatScreen) -> None:
        self.screen = screen
        self.pieces: list[tuple[str, str]] = []
        self.message_id = 0
        self.last = 0.0

    def add(self, message: Message, delta) -> None:
        self.message_id = message.id
        if self.pieces and self.pieces[-1][0] == delta.channel:
            self.pieces[-1] = (delta.channel, self.pieces[-1][1] + delta.text)
        else:
            self.pieces.append((delta.channel, delta.text))
        if time.perf_counter() - self.last >= self.INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self.pieces:
            self.screen.post_message(ChatScreen.ReplyDelta(self.message_id, self.pieces))
            self.pieces = []
        self.last = time.perf_counter()
