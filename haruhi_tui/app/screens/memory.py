"""The chat's long-term memory: pinned facts (add, edit, remove) and the rolling summary (read, edit).

Pins go into every prompt as their own block; the summary stands in for the turns the history window
has left out. Both are stored with the chat, so they outlive the app.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from haruhi_tui.app.services import Report
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.store import StoreError

from .dialogs import ConfirmDialog, TextDialog


class MemoryScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("a", "add_pin", "Add pin"),
        Binding("e", "edit_pin", "Edit pin"),
        Binding("d,delete", "remove_pin", "Remove pin"),
        Binding("ctrl+s", "save_summary", "Save summary"),
    ]

    def __init__(self, session: ChatSession, report: Report) -> None:
        super().__init__()
        self.session = session
        self.report = report

    def compose(self) -> ComposeResult:
        with Vertical(id="memory"):
            yield Label(f"Memory of this chat with {self.session.character.name}", classes="dialog-title")
            yield Label("Pinned facts (always in the prompt): a adds, e edits, d removes", classes="section")
            yield OptionList(id="pins")
            yield Label("Summary of earlier turns (the model writes it, or you do; ctrl+s saves)", classes="section")
            yield Static("", id="summary-note", classes="note")
            yield TextArea(self.session.chat.summary, soft_wrap=True, show_line_numbers=False, id="summary")
        yield Footer()

    def on_mount(self) -> None:
        self.show_pins()
        self.show_summary_note()
        self.query_one("#pins", OptionList).focus()

    def show_summary_note(self) -> None:
        s = self.session
        note = "no summary yet: the model writes one when the chat outgrows the history budget, or write your own"
        if s.chat.summary and s.chat.summary_upto is None:
            note = "written by you: sent with every reply"
        elif s.chat.summary:
            note = "applies to this branch" if s.summary else "written for another branch: not used on this one"
        self.query_one("#summary-note", Static).update(note)

    def show_pins(self) -> None:
        pins = self.query_one("#pins", OptionList)
        pins.clear_options()
        options = [Option(p.text, id=str(p.id)) for p in self.session.pins]
        pins.add_options(options or [Option("(no pins yet: a adds one)", disabled=True)])
        if self.session.pins:
            pins.highlighted = 0

    def _selected_pin(self) -> int | None:
        pins = self.query_one("#pins", OptionList)
        if pins.highlighted is None:
            return None
        option = pins.get_option_at_index(pins.highlighted)
        return int(option.id) if option.id else None

    def action_add_pin(self) -> None:
        def done(text: str | None) -> None:
            if text:
                self._guard(lambda: self.session.add_pin(text))
                self.show_pins()

        self.app.push_screen(TextDialog("A fact to remember (pinned)", note="sent with every reply"), done)

    def action_edit_pin(self) -> None:
        pin_id = self._selected_pin()
        pin = next((p for p in self.session.pins if p.id == pin_id), None)
        if pin is None:
            return

        def done(text: str | None) -> None:
            if text:
                self._guard(lambda: self.session.edit_pin(pin.id, text))
                self.show_pins()

        self.app.push_screen(TextDialog("Edit the pinned fact", pin.text), done)

    def action_remove_pin(self) -> None:
        """Asks first: the list has the focus, and a word typed here by mistake must not delete a fact."""
        pin_id = self._selected_pin()
        if pin_id is None:
            return

        def done(yes: bool | None) -> None:
            if yes:
                self._guard(lambda: self.session.remove_pin(pin_id))
                self.show_pins()

        self.app.push_screen(ConfirmDialog("Remove this pinned fact?", "Remove"), done)

    def action_save_summary(self) -> None:
        text = self.query_one("#summary", TextArea).text
        if self._guard(lambda: self.session.set_summary(text)):
            self.notify("summary saved: sent with every reply (F2 shows it)" if text.strip() else "summary cleared")
            self.show_summary_note()

    def action_close(self) -> None:
        self.dismiss(None)

    def _guard(self, fn) -> bool:
        try:
            fn()
            return True
        except (StoreError, ValueError) as exc:
            self.report(str(exc))
            return False
