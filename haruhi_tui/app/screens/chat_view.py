"""A chat on screen: saved chats on the left, the conversation, the status line and the message box.

:class:`ChatView` shows which chat is open and its messages, keeps the saved chats (open, new, rename,
delete) and follows what the app's services report (a model loading, ready or failed; the characters read).
:class:`~.chat.ChatScreen` builds on it with what the user does in a chat: talk, edit, compare.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message as TMessage
from textual.screen import Screen
from textual.widgets import Footer, ProgressBar, Static

from haruhi_tui.app.messages import CharactersLoaded, ModelFailed, ModelLoading, ModelReady
from haruhi_tui.app.services import Services
from haruhi_tui.app.widgets import ChatList, MessageView, PromptInput, character_color
from haruhi_tui.app.widgets.speaker_bar import SpeakerBar
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.services.greeting import greeting_caption
from haruhi_tui.services.group_chat import GroupSession, resume_chat
from haruhi_tui.store import Message, StoreError

from .dialogs import ConfirmDialog, TextDialog
from .pick import CharacterPicker

#: Under a chat where the user has not said anything yet: the keys a first session needs beyond the footer.
FIRST_KEYS = ("Enter sends · alt+↑ selects a message: F4 edits it, ctrl+del deletes it · F7 continues a reply · "
              "F8 writes your line for you · ctrl+k compares two models · ctrl+b your chats · F6 trains a model · "
              "F1 every key")
#: What the status says when the bundled model is loaded: it is a demo, not a role-play model.
DEMO_NOTE = "a small demo: ctrl+p → Download model for a better one"


class ChatView(Screen[None]):
    """One chat on screen, the saved chats beside it, and the model's and characters' state."""

    class Problem(TMessage):
        """Something went wrong in a worker (the database refused a write): reported, the chat goes on."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services
        self.session: ChatSession | None = None
        self.generating = False
        self.show_thinking = False  # gpt-oss analysis shown in replies (ctrl+t)

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield ChatList(id="sidebar")
            with Vertical(id="main"):
                yield Static("", id="chat-title")
                yield VerticalScroll(id="conversation")
                with Horizontal(id="status-row"):
                    yield Static("", id="status")
                    yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="model-progress")
                yield SpeakerBar(id="speakers")
                yield PromptInput(self.input_history(), placeholder="Say something… (Enter sends)", id="prompt")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#conversation", VerticalScroll).anchor()
        self.query_one("#sidebar").display = self.app.size.width >= 100
        self.refresh_chats()
        self.update_title()
        self.query_one(PromptInput).focus()
        if self.services.store_problem:
            self.set_status("sessions are not being saved (see the message)")
        self.show_progress(False)

    # -- what the app's services report ----------------------------------------------------------
    @on(ModelLoading)
    def _model_loading(self, event: ModelLoading) -> None:
        self.show_progress(True, event.fraction)
        self.set_status(event.text)
        self.update_title()

    @on(ModelReady)
    def _model_ready(self, event: ModelReady) -> None:
        engine = event.engine
        self.show_progress(False)
        if self.services.models.demo:
            self.set_status(f"{engine.name} ready · {DEMO_NOTE}")
        else:
            self.set_status(f"{engine.name} ready · {engine.style} style · context {engine.n_ctx} tokens")
        self.update_title()

    @on(ModelFailed)
    def _model_failed(self, event: ModelFailed) -> None:
        """The load failed (the app has shown why); the model loaded before, if any, keeps answering."""
        self.show_progress(False)
        engine = self.services.models.engine
        if engine is not None:
            self.set_status(f"that model did not load: still talking with {engine.name} (ctrl+o picks another)")
        else:
            self.set_status("no model loaded: ctrl+o picks one")
        self.update_title()

    @on(CharactersLoaded)
    async def _characters_loaded(self, event: CharactersLoaded) -> None:
        """At start: a new chat with the character asked for, else the last chat, else the character picker."""
        library = self.services.library
        if event.start:
            match = library.find(event.start)
            if match is not None:
                await self.start_chat(match.folder)
                return
            self.services.report(f"no character {event.start!r} in {library.characters_dir}")
        try:
            chats = self.services.store.chats(limit=1)
        except StoreError:
            chats = []
        if chats and chats[0].character in library.characters:
            await self.resume_chat(chats[0].id)
        else:
            self.action_new_chat()

    def _store_problem(self, text: str) -> None:
        self.post_message(self.Problem(text))

    @on(Problem)
    def _problem(self, event: Problem) -> None:
        self.services.report(event.text, timeout=8)

    # -- what is on screen -----------------------------------------------------------------------
    @property
    def conversation(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    def set_status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    def show_progress(self, visible: bool, fraction: float | None = None) -> None:
        """The model's loading bar; hidden, it is given a total, so that it does not animate (an indeterminate
        bar repaints 15 times a second, hidden or not, and each wake-up of the UI is taken from decoding)."""
        bar = self.query_one("#model-progress", ProgressBar)
        bar.display = visible
        if not visible:
            bar.update(total=1.0, progress=0.0)
        elif fraction is None:
            bar.update(total=None)
        else:
            bar.update(total=1.0, progress=fraction)

    def update_title(self) -> None:
        """Who you talk to (every member of a group), who you play (Persona in the palette) and with which
        model; a long work's name is shortened so the model always shows."""
        models = self.services.models
        model = models.label() + (" · demo model" if models.demo and not models.loading else "")
        title = self.query_one("#chat-title", Static)
        if self.session is None:
            title.update(Text(f"no chat yet: ctrl+n picks a character  —  {model}"))
            return
        members = self.session.members
        width = (title.size.width or self.app.size.width) - 2
        line = Text(" · ").join(Text(m.name, style=f"bold {character_color(m.folder)}") for m in members)
        you = f" · you: {self.session.settings.user_name}"
        c = self.session.character
        room = width - line.cell_len - cell_len(you) - cell_len(model) - 8  # " · " and "  —  "
        if len(members) == 1 and c.source_work and room >= 6:
            work = Text(c.source_work)
            work.truncate(room, overflow="ellipsis")
            line.append(" · ").append_text(work)
        title.update(line.append(you).append(f"  —  {model}"))

    def on_resize(self) -> None:
        self.update_title()

    def _view_for(self, m: Message, *, waiting: bool = False) -> MessageView:
        assert self.session is not None
        character = self.session.character_for(m)
        if m.role == "user":
            return MessageView("user", self.session.settings.user_name, m.content, message_id=m.id)
        caption = greeting_caption(m.stats, *self.session.alternatives(m.id)) if m.stats.get("greeting") else ""
        return MessageView("assistant", character.name, m.content, analysis=m.analysis, status=m.status,
                           color=character_color(character.folder), message_id=m.id,
                           show_thinking=self.show_thinking, caption=caption, waiting=waiting)

    def versions(self) -> dict[int, tuple[int, int]]:
        """For each message on the branch shown: which of its alternatives it is, and how many there are."""
        if self.session is None or self.session.chat.id <= 0:
            return {}
        try:
            every = self.services.store.messages(self.session.chat.id)
        except StoreError:
            return {}
        by_parent: dict[int | None, list[int]] = {}
        for m in every:
            by_parent.setdefault(m.parent_id, []).append(m.id)
        out = {}
        for m in self.session.messages:
            siblings = by_parent.get(m.parent_id, [m.id])
            out[m.id] = (siblings.index(m.id) + 1 if m.id in siblings else 1, max(1, len(siblings)))
        return out

    def name_views(self) -> None:
        """Give the views mounted while talking (your line) the ids of their saved messages, so alt+↑ reaches
        them too."""
        if self.session is None:
            return
        views = self.views()
        if len(views) == len(self.session.messages):
            for view, message in zip(views, self.session.messages):
                if view.message_id is None:
                    view.message_id = message.id

    def show_versions(self) -> None:
        versions = self.versions()
        for view in self.views():
            if view.message_id is not None:
                view.set_version(*versions.get(view.message_id, (1, 1)))

    async def show_session(self, session: ChatSession | None) -> None:
        """Put a chat on screen (all messages of its current branch). A chat left without a word said is
        not kept (see :meth:`forget_if_unused`)."""
        if self.session is not None and (session is None or session.chat.id != self.session.chat.id):
            self.forget_if_unused(self.session)
        self.session = session
        self.query_one(SpeakerBar).show(session)
        await self.conversation.remove_children()
        if session is not None:
            views = [self._view_for(m) for m in session.messages]
            versions = self.versions()
            for view in views:
                view.version = versions.get(view.message_id or 0, (1, 1))
            await self.conversation.mount_all(views)
            if not any(m.role == "user" for m in session.messages):
                await self.conversation.mount(Static(FIRST_KEYS, id="first-keys", classes="note"))
            incomplete = [m for m in session.messages if m.status == "incomplete"]
            if incomplete:
                self.set_status("a reply was cut off when the app stopped: ctrl+r regenerates it")
        self.conversation.anchor()
        self.update_title()
        self.refresh_chats()

    def hide_first_keys(self) -> None:
        for hint in self.query("#first-keys"):
            hint.remove()

    def views(self) -> list[MessageView]:
        return list(self.conversation.query(MessageView))

    # -- saved chats -----------------------------------------------------------------------------
    def forget_if_unused(self, session: ChatSession) -> None:
        """Delete a chat the user left without saying anything or pinning anything (a character opened by
        mistake, a picker that opened the wrong one): only conversations are kept. A group scene the characters
        went on with (Enter on an empty line) is a conversation too: anything after the greeting counts."""
        store, chat_id = self.services.store, session.chat.id
        try:
            said = any(m.role == "user" or m.parent_id is not None for m in store.messages(chat_id))
            if chat_id <= 0 or said or store.pins(chat_id):
                return
            store.delete_chat(chat_id)
        except StoreError:
            return

    def input_history(self) -> list[str]:
        """What the user typed in earlier chats (up/down in the message box)."""
        try:
            return self.services.store.recent_user_lines()
        except StoreError:
            return []

    def refresh_chats(self) -> None:
        try:
            chats = self.services.store.chats()
        except StoreError as exc:
            self.services.report(str(exc))
            return
        current = self.session.chat.id if self.session else None
        self.query_one(ChatList).show_chats(chats, current)

    def action_new_chat(self) -> None:
        if self.generating:
            self.notify("a reply is still coming: Esc stops it", severity="warning")
            return

        async def picked(folder: str | None) -> None:
            if folder:
                await self.start_chat(folder)

        self.app.push_screen(CharacterPicker(self.services.library, self.services.report), picked)

    async def start_chat(self, folder: str) -> None:
        services = self.services
        character = services.library.characters.get(folder)
        if character is None:
            services.report(f"no character {folder!r} in {services.library.characters_dir}")
            return
        try:
            session = ChatSession.start(services.store, character, model=services.models.path(),
                                        on_error=self._store_problem)
        except StoreError as exc:
            services.report(str(exc))
            return
        await self.show_session(session)
        self.query_one(PromptInput).focus()

    def action_new_group_chat(self) -> None:
        from .group import GroupPicker

        if self.generating:
            self.notify("a reply is still coming: Esc stops it", severity="warning")
            return

        async def picked(folders: list[str] | None) -> None:
            if folders:
                await self.start_group_chat(folders)

        self.app.push_screen(GroupPicker(self.services.library), picked)

    async def start_group_chat(self, folders: list[str]) -> None:
        """A new group chat with these characters (in turn order), opened with its group greeting."""
        services = self.services
        try:
            members = [services.library.characters[f] for f in folders]
            session = GroupSession.start_group(services.store, members, model=services.models.path(),
                                               on_error=self._store_problem)
        except (KeyError, HaruhiError) as exc:
            services.report(f"cannot start the group chat: {exc}")
            return
        await self.show_session(session)
        self.query_one(PromptInput).focus()

    async def resume_chat(self, chat_id: int) -> None:
        try:
            session = resume_chat(self.services.store, chat_id, self.services.library.characters,
                                  on_error=self._store_problem)
        except HaruhiError as exc:
            self.services.report(str(exc))
            return
        await self.show_session(session)

    @on(ChatList.OptionSelected, "#sidebar")
    async def _open_chat(self, event: ChatList.OptionSelected) -> None:
        if self.generating:
            self.notify("a reply is still coming: Esc stops it", severity="warning")
            return
        if event.option.id and (self.session is None or str(self.session.chat.id) != event.option.id):
            await self.resume_chat(int(event.option.id))
        self.query_one(PromptInput).focus()

    @on(ChatList.Rename)
    def _rename(self, event: ChatList.Rename) -> None:
        if self.app.screen is self:  # keys typed while a dialog was opening must not open another
            self.rename_chat(event.chat_id)

    @on(ChatList.Delete)
    def _delete(self, event: ChatList.Delete) -> None:
        if self.app.screen is self:
            self.delete_chat(event.chat_id)

    @on(ChatList.TypedText)
    def _typed_in_list(self, event: ChatList.TypedText) -> None:
        """A letter typed in the chat list that is not one of its keys: the user meant to talk."""
        box = self.query_one(PromptInput)
        box.focus()
        box.insert_text_at_cursor(event.text)

    def rename_chat(self, chat_id: int | None = None) -> None:
        chat_id = chat_id or (self.session.chat.id if self.session else None)
        if chat_id is None:
            return
        store, report = self.services.store, self.services.report
        try:
            title = store.chat(chat_id).title
        except StoreError as exc:
            report(str(exc))
            return

        def done(new: str | None) -> None:
            if not new:
                return
            try:
                store.rename_chat(chat_id, new)
            except StoreError as exc:
                report(str(exc))
                return
            if self.session and self.session.chat.id == chat_id:
                self.session.chat.title = new
            self.refresh_chats()

        self.app.push_screen(TextDialog("Rename chat", title), done)

    def delete_chat(self, chat_id: int | None = None) -> None:
        chat_id = chat_id or (self.session.chat.id if self.session else None)
        if chat_id is None:
            return
        if self.generating and self.session and self.session.chat.id == chat_id:
            self.notify("a reply is still coming: Esc stops it first", severity="warning")
            return

        async def done(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.services.store.delete_chat(chat_id)
            except StoreError as exc:
                self.services.report(str(exc))
                return
            if self.session and self.session.chat.id == chat_id:
                self.session = None  # gone already: nothing to forget
                await self.show_session(None)
            self.refresh_chats()
            self.query_one(PromptInput).focus()  # not the list, where letters are commands

        self.app.push_screen(ConfirmDialog("Delete this chat and all its messages?"), done)

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        sidebar.display = not sidebar.display
        if sidebar.display:
            self.refresh_chats()
            sidebar.focus()
            self.set_status("chats: Enter opens · r renames · d deletes · typing goes to the message box")
        else:
            self.query_one(PromptInput).focus()
