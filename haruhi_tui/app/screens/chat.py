"""The main screen: a chat and what the user does in it — talk, stop, regenerate, edit and switch versions,
compare two models, look at the memory and the context.

The reply is generated in a thread worker (:meth:`ChatScreen.run_turn`) that drives the UI-free
:class:`~haruhi_tui.services.chat.ChatSession`; it posts the text back a few times a second (:class:`_DeltaBatcher`),
so the UI never waits on the model, the model rarely waits on the UI, and a stop key takes effect between two
tokens. While the user types, another worker evaluates the prompt the line would get (:mod:`.warm_up`).
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
from haruhi_tui.app.widgets.speaker_bar import SpeakerBar
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.services.group_chat import GroupSession
from haruhi_tui.store import Message

from .context import ContextScreen
from .message_actions import MessageActions
from .warm_up import GROUP as WARM_GROUP
from .warm_up import DraftWarmUp


class ChatScreen(MessageActions):
    """The footer shows what a first session needs (at 80 columns); F1 lists every key, grouped."""

    BINDINGS = [
        Binding("escape", "stop", "Stop", show=False,
                tooltip="Stop the reply (it is kept, marked stopped); else unselect"),
        Binding("ctrl+n", "new_chat", "New", tooltip="A new chat: pick a character"),
        Binding("ctrl+o", "app.pick_model", "Model", tooltip="Pick a model: bundled, a local GGUF, or a path"),
        Binding("ctrl+r", "regenerate", "Retry", tooltip="A new reply to your last line (the old one is kept: alt+←)"),
        Binding("f7", "continue_reply", "Continue", show=False, tooltip="Continue the last reply where it ended"),
        Binding("f8", "impersonate", "Write my line", show=False,
                tooltip="The model writes your next line; edit it, Enter sends"),
        Binding("f2", "context", "Context", tooltip="Exactly what the model was sent, block by block"),
        Binding("f3", "memory", "Memory", tooltip="Pinned facts and the summary of earlier turns"),
        Binding("f9", "settings", "Settings", tooltip="This chat's settings: temperature, reply length, your name"),
        Binding("ctrl+t", "toggle_thinking", "Think", show=False,
                tooltip="Show or hide the character's thinking (gpt-oss)"),
        Binding("ctrl+b", "toggle_sidebar", "Chats", show=False,
                tooltip="Show or hide saved chats (r renames, d deletes)"),
        Binding("ctrl+k", "compare", priority=True, description="Compare", show=False,
                tooltip="Your line answered by two models side by side; keep one"),
        Binding("ctrl+g", "next_speaker", "Speaker", show=False,
                tooltip="Group chat: who speaks next (auto, or a member)"),
        Binding("f1", "app.help", "Help", tooltip="Every key, and the commands of ctrl+p"),
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

    class Impersonated(TMessage):
        """The user's next line as the model wrote it (F8), for the message box."""

        def __init__(self, text: str, error: str = "") -> None:
            super().__init__()
            self.text, self.error = text, error

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.cancel = threading.Event()
        self.warm_up = DraftWarmUp(self)  # evaluates the line being typed
        self._reply_view: MessageView | None = None
        self.turns_done = 0
        self.submitted_at = 0.0  # perf_counter of the last Enter/ctrl+r: first-token latency as the user sees it

    # -- talking ---------------------------------------------------------------------------------
    @on(PromptInput.Submitted, "#prompt")
    async def _submitted(self, event: PromptInput.Submitted) -> None:
        text = event.value.strip()
        group = isinstance(self.session, GroupSession)
        if not text and not group:  # in a group chat, Enter on an empty line lets the next character speak
            return
        if self.session is None:
            self.notify("pick a character first (ctrl+n)", severity="warning")
            return
        if self.generating:
            self.notify("a reply is still coming: Esc stops it", severity="warning")
            return
        box = self.query_one(PromptInput)
        self.hide_first_keys()
        if text:
            box.value = ""
            box.remember(text)
            user_view = MessageView("user", self.session.settings.user_name, text)
            await self.conversation.mount(user_view)
            self.conversation.anchor()
        self.begin_turn(text)

    @on(PromptInput.Changed, "#prompt")
    def _draft_changed(self, event: PromptInput.Changed) -> None:
        self.warm_up.typed(event.value)

    def action_regenerate(self) -> None:
        session = self.session
        if session is None or (  # a greeting alone answers nothing
                not any(m.role == "user" for m in session.messages) if not isinstance(session, GroupSession)
                else not session.messages or session.messages[-1].parent_id is None):
            self.notify("nothing to regenerate yet", severity="warning")
            return
        if self.generating:
            self.notify("a reply is still coming: Esc stops it", severity="warning")
            return
        for view in reversed(self.views()):
            if view.role != "assistant":
                break
            view.remove()
            if isinstance(self.session, GroupSession):
                break  # a group chat regenerates the last reply only
        self.begin_turn(None)

    def action_stop(self) -> None:
        if self.generating:
            self.cancel.set()
            self.set_status("stopping…")
        elif self.unselect():
            self.set_status("")

    def begin_turn(self, text: str | None) -> None:
        """Send ``text`` and generate the reply (None: a new reply to the last line)."""
        self._begin()
        self.run_turn(text)

    def _begin(self) -> None:
        self.unselect()  # the conversation moves on: the keys act on what comes next, not an old selection
        self.submitted_at = time.perf_counter()
        self.generating = True
        self.cancel = threading.Event()
        loaded = self.services.models.engine is not None
        self.set_status("thinking…" if loaded else "waiting for the model to load…")

    @work(thread=True, group="generate")
    def run_turn(self, text: str | None) -> None:
        """One turn in a worker thread: commit the user's line, wait for the model, stream the reply (``text``
        None: regenerate; "": in a group chat, the next character speaks on)."""
        session, services, cancel = self.session, self.services, self.cancel
        assert session is not None
        reply: Message | None = None
        try:
            if text:
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
            self.warm_up.settle(session, engine)  # while the reply is read (a reply or a warm-up gets the model)
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
        view = self._view_for(event.reply, waiting=True)
        self._reply_view = view
        await self.conversation.mount(view)
        self.conversation.anchor()
        self.set_status("replying… (Esc stops)")
        self.query_one(SpeakerBar).show(self.session, speaking=event.reply.character)

    @on(ReplyDelta)
    def _reply_delta(self, event: ReplyDelta) -> None:
        if self._reply_view is not None:
            for channel, text in event.pieces:
                self._reply_view.append(channel, text)

    @on(TurnDone)
    async def _turn_done(self, event: TurnDone) -> None:
        self.generating = False
        if isinstance(self.session, GroupSession):
            self.session.speaker = self.session.next_speaker()  # whose prompt a warm-up evaluates while you type
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
            self.query_one(SpeakerBar).show(self.session)
            self.name_views()
            self.show_versions()
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
        self.warm_up.stop()
        if self.generating:
            self.cancel.set()
        await self.app.workers.wait_for_complete([w for w in self.app.workers if w.group in ("generate", WARM_GROUP)])

    # -- continue, impersonate (SillyTavern's) ----------------------------------------------------
    def action_continue_reply(self) -> None:
        session = self.session
        if session is None or self._refuse_while_generating():
            return
        leaf = session.leaf
        if leaf is None or leaf.role != "assistant":
            self.notify("nothing to continue: the last message is not a reply (Enter sends yours)", severity="warning")
            return
        views = self.views()
        self._begin()
        self._reply_view = views[-1] if views and views[-1].message_id == leaf.id else None
        self.set_status("continuing the reply… (Esc stops)")
        self.run_continue()

    @work(thread=True, group="generate")
    def run_continue(self) -> None:
        """Extend the last reply in a worker thread, streamed into its view like a reply."""
        session, services, cancel = self.session, self.services, self.cancel
        assert session is not None
        try:
            engine = services.models.wait(cancel)
            if engine is None:
                error = "" if cancel.is_set() else f"no model loaded ({services.models.error or 'ctrl+o picks one'})"
                self.post_message(self.TurnDone(session.leaf, error))
                return
            batch = _DeltaBatcher(self)
            reply = session.continue_reply(engine, on_delta=batch.add, cancel=cancel, sampling=services.sampling,
                                           save_interval=services.save_interval)
            batch.flush()
            self.post_message(self.TurnDone(reply))
        except (HaruhiError, ValueError) as exc:
            self.post_message(self.TurnDone(session.leaf, str(exc)))
        except Exception as exc:  # the app keeps running whatever the model does
            self.post_message(self.TurnDone(session.leaf, f"generation failed: {type(exc).__name__}: {exc}"))

    def action_impersonate(self) -> None:
        if self.session is None or self._refuse_while_generating():
            return
        self._begin()
        self.set_status("writing your next line… (Esc stops)")
        self.run_impersonate()

    @work(thread=True, group="generate")
    def run_impersonate(self) -> None:
        session, services, cancel = self.session, self.services, self.cancel
        assert session is not None
        try:
            engine = services.models.wait(cancel)
            if engine is None:
                self.post_message(self.Impersonated("", "" if cancel.is_set() else "no model loaded: ctrl+o picks one"))
                return
            self.post_message(self.Impersonated(session.impersonate(engine, cancel=cancel, sampling=services.sampling)))
        except (HaruhiError, ValueError) as exc:
            self.post_message(self.Impersonated("", str(exc)))
        except Exception as exc:  # the app keeps running whatever the model does
            self.post_message(self.Impersonated("", f"generation failed: {type(exc).__name__}: {exc}"))

    @on(Impersonated)
    def _impersonated(self, event: Impersonated) -> None:
        self.generating = False
        if event.error:
            self.services.report(event.error)
            self.set_status(event.error)
            return
        if not event.text:
            self.set_status("the model wrote nothing for you this time: F8 tries again")
            return
        box = self.query_one(PromptInput)
        box.value = event.text
        box.cursor_position = len(event.text)
        box.focus()
        self.set_status("your next line, as the model would write it: edit it, Enter sends")

    # -- memory, compare -----------------------------------------------------------------------
    def action_memory(self) -> None:
        from .memory import MemoryScreen

        if self.session is None:
            self.notify("no chat yet", severity="warning")
            return
        self.app.push_screen(MemoryScreen(self.session, self.services.report))

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

    def action_next_speaker(self) -> None:
        """Group chat: pick who speaks next, in the order auto, each member, auto again."""
        if not isinstance(self.session, GroupSession):
            self.notify("ctrl+g picks who speaks next in a group chat (palette: New group chat)", timeout=4)
            return
        chosen = self.session.cycle_choice()
        self.query_one(SpeakerBar).show(self.session)
        self.notify(f"{chosen.name} answers from now on" if chosen else "next speaker: by mention, then in turn",
                    timeout=3)

    # -- views -----------------------------------------------------------------------------------
    def action_toggle_thinking(self) -> None:
        self.show_thinking = not self.show_thinking
        for view in self.views():
            view.set_thinking(self.show_thinking)
        engine = self.services.models.engine
        if (engine is None or engine.style != "harmony") and not any(v.analysis for v in self.views()):
            name = engine.name if engine is not None else "this model"
            self.notify(f"{name} does not think out loud: only gpt-oss models have thinking to show "
                        f"(it will be {'shown' if self.show_thinking else 'hidden'} when one does)", timeout=5)
            return
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
    """Groups streamed pieces into at most 4 screen updates a second (the first one at once).

    llama.cpp decodes on every core, so each millisecond the UI spends on an update is taken from it; an
    update per token cost 8-15 ms of UI time a token (relayout and streaming Markdown), a third of a core at
    ~35 tokens/s. A plain-text update costs the UI 1-5 ms (a repaint, on the 2-core machine): ten a second
    took 3-3.5 % of a core while a reply streamed at 40-55 tokens/s, four a second 2 % (a few words each,
    which still reads as a stream).
    """

    INTERVAL = 0.25

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
