"""What the user does to one message of a chat: select it, edit it, delete it, switch between its versions,
and the chat's settings (temperature, reply length, your name).

The selection is the message the edit, delete and version keys act on. It is cleared whenever the
conversation moves on (a line sent, a reply regenerated or continued, another chat shown), so F4 after a
new line always edits that line, never one selected earlier.
"""

from __future__ import annotations

from textual.binding import Binding

from haruhi_tui.app.widgets import PromptInput
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services.chat import ChatSession

from .chat_view import ChatView
from .dialogs import ConfirmDialog, TextDialog
from .settings import SettingsDialog

SELECTED_KEYS = "F4 edits · ctrl+del deletes · alt+←→ versions · Esc lets go"


class MessageActions(ChatView):
    BINDINGS = [
        Binding("alt+up", "select(-1)", priority=True, description="Select previous", show=False,
                tooltip="Select an earlier message (F4 edits it, ctrl+delete deletes it)"),
        Binding("alt+down", "select(1)", priority=True, description="Select next", show=False,
                tooltip="Select a later message"),
        Binding("f4", "edit", "Edit", show=False,
                tooltip="Edit the selected message (or your last line); the old one stays"),
        Binding("ctrl+delete", "delete_message", priority=True, description="Delete message", show=False,
                tooltip="Delete the selected message (or the last) and all after it"),
        Binding("alt+left", "sibling(-1)", priority=True, description="Previous version", show=False,
                tooltip="Previous version of the selected message (regenerated, edited)"),
        Binding("alt+right", "sibling(1)", priority=True, description="Next version", show=False,
                tooltip="Next version of the selected message"),
    ]

    def __init__(self, services) -> None:
        super().__init__(services)
        self.selected: int | None = None  # id of the message the edit, delete and version keys act on

    def _refuse_while_generating(self) -> bool:
        if self.generating:
            self.notify("a reply is still coming: Esc stops it first (nothing is lost)", severity="warning")
            return True
        return False

    # -- the selection ---------------------------------------------------------------------------
    def action_select(self, step: int) -> None:
        views = [v for v in self.views() if v.message_id is not None and v.message_id > 0]
        if not views:
            return
        ids = [v.message_id for v in views]
        i = ids.index(self.selected) + step if self.selected in ids else (len(ids) - 1 if step < 0 else 0)
        i = max(0, min(len(ids) - 1, i))
        self.mark(ids[i])
        views[i].scroll_visible()
        if self.session is not None:
            n, count = self.session.alternatives(ids[i])
            self.set_status(f"selected {n}/{count}: {SELECTED_KEYS}")

    def mark(self, message_id: int | None) -> None:
        """Select a message (None: none), and show it."""
        self.selected = message_id
        for view in self.views():
            view.set_class(view.message_id == message_id and message_id is not None, "selected")

    def unselect(self) -> bool:
        """Clear the selection; False if there was none."""
        if self.selected is None:
            return False
        self.mark(None)
        return True

    async def show_session(self, session: ChatSession | None) -> None:
        self.selected = None
        await super().show_session(session)

    def target(self, role: str | None = "user") -> int | None:
        """The selected message, else the last message of ``role`` (None: the last message), else the first one
        (the character's greeting, before anything was said)."""
        if self.session is None:
            return None
        ids = [m.id for m in self.session.messages]
        if self.selected in ids:
            return self.selected
        return next((m.id for m in reversed(self.session.messages) if role is None or m.role == role),
                    ids[0] if ids else None)

    # -- edit, delete, versions ------------------------------------------------------------------
    def action_edit(self) -> None:
        if self.session is None or self._refuse_while_generating():
            return
        target = self.target()
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
            self.mark(msg.id)
            if msg.role == "user":
                self.begin_turn(None)
            else:
                self.set_status("reply edited: the old version is kept (alt+← shows it)")

        who = "your line" if old.role == "user" else f"{session.character.name}'s reply"
        self.app.push_screen(TextDialog(f"Edit {who}", old.content, note="the old version stays as a branch"), done)

    def action_delete_message(self) -> None:
        if self.session is None or self._refuse_while_generating():
            return
        target = self.target(role=None)
        if target is None:
            self.notify("nothing to delete yet", severity="warning")
            return
        session = self.session
        index = next(i for i, m in enumerate(session.messages) if m.id == target)
        after = len(session.messages) - index - 1
        what = "this message" + (f" and the {after} after it" if after else "")

        async def done(yes: bool | None) -> None:
            if not yes:
                return
            try:
                session.delete_message(target)
            except (HaruhiError, ValueError) as exc:
                self.services.report(str(exc))
                return
            await self.show_session(session)
            self.set_status(f"deleted {what}")
            self.query_one(PromptInput).focus()

        self.app.push_screen(ConfirmDialog(f"Delete {what}?"), done)

    async def action_sibling(self, step: int) -> None:
        if self.session is None or self._refuse_while_generating():
            return
        target = self.target()
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
        self.mark(shown.id)
        n, count = self.session.alternatives(shown.id)
        self.set_status(f"version {n} of {count}")

    # -- the chat's settings ---------------------------------------------------------------------
    def action_settings(self) -> None:
        session = self.session
        if session is None:
            self.notify("no chat yet: ctrl+n picks a character", severity="warning")
            return

        async def done(changed: bool | None) -> None:
            if changed:
                await self.show_session(session)  # your name on your lines
                s = session.settings
                self.set_status(f"settings saved: you are {s.user_name} · temperature {s.temperature:g} · "
                                f"replies up to {s.max_tokens} tokens")

        self.app.push_screen(SettingsDialog(session, self.services.sampling is not None), done)

    def begin_turn(self, text: str | None) -> None:
        """Send ``text`` (None: reply to the last line again); :class:`~.chat.ChatScreen` generates."""
        raise NotImplementedError
