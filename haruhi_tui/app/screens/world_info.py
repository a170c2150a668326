"""World info (SillyTavern lorebooks) of a chat: the character's own book, the books attached to the chat, the
stored ones to attach, and which entries fired on the last reply and the key that fired each.

The character's book (``lorebook.json`` in its folder) is read-only here: it is the character's. A chat's books
are stored lorebooks (imported once into the sessions database from a SillyTavern world-info ``.json``, a
card's ``character_book`` or a card ``.json``) or files read afresh each turn.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Label, OptionList, Static
from textual.widgets.option_list import Option

from haruhi_tui.app.services import Report
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.lore_scan import LoreActivation
from haruhi_tui.core.lorebook import Lorebook, LoreEntry, parse_lorebook_text, read_lorebook_file
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.services.roleplay import import_lorebook
from haruhi_tui.store import LoreAttachment, StoredLorebook, StoreError

from .cards import PathDialog
from .dialogs import ConfirmDialog

MAX_LISTED = 40  # entries of the character's book listed; the rest are counted


def entry_line(entry: LoreEntry) -> str:
    """One entry as the screen lists it: its title and the keys that fire it."""
    keys = "always (constant)" if entry.constant else ", ".join(entry.keys) or "no keys"
    if entry.secondary_keys and not entry.constant:
        keys += f" + {', '.join(entry.secondary_keys)}"
    flags = [] if entry.enabled else ["off"]
    if entry.position not in ("before_char", "after_char"):
        flags.append(entry.position.replace("_", " ") + (f" {entry.depth}" if entry.position == "at_depth" else ""))
    return f"{entry.title}: {keys}" + (f" ({', '.join(flags)})" if flags else "")


def book_summary(book: Lorebook | None) -> Text:
    if book is None:
        return Text("This character has no lorebook of its own.", style="dim")
    text = Text.assemble((book.name or "lorebook", "bold"), f" · {len(book.entries)} entries")
    for entry in book.entries[:MAX_LISTED]:
        text.append(f"\n  {entry_line(entry)}")
    if len(book.entries) > MAX_LISTED:
        text.append(f"\n  … and {len(book.entries) - MAX_LISTED} more", style="dim")
    return text


def fired_summary(lore: LoreActivation | None, where: str) -> Text:
    """The entries that went into the prompt and the key that fired each; those over the budget."""
    if lore is None:
        return Text("No reply yet: the entries that fire are listed after the next one (F2 shows them too).",
                    style="dim")
    if not lore.entries and not lore.cut:
        return Text(f"No entry fired {where}.", style="dim")
    count = len(lore.entries)
    text = Text(f"{count} {'entry' if count == 1 else 'entries'} {where}:")
    for active in lore.entries:
        text.append(f"\n  {active.title}", style="bold")
        text.append(f" ({active.book}): {active.reason}")
    for active in lore.cut:
        text.append(f"\n  {active.title} ({active.book}): {active.reason}, left out: over the "
                    f"{lore.budget}-token budget", style="dim")
    return text


class WorldInfoScreen(Screen[None]):
    """The chat's lorebooks: attach a stored one (Enter), import a world-info file (i), use a file as it is (f),
    detach or delete (d); what fired on the last reply; the character's own book."""

    DEFAULT_CSS = """
    #world-info { padding: 0 1; }
    #world-info OptionList { height: auto; max-height: 8; }
    """
    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("i", "import_book", "Import .json"),
        Binding("f", "attach_file", "Use a file"),
        Binding("d,delete", "remove", "Detach/delete"),
    ]

    def __init__(self, session: ChatSession, report: Report) -> None:
        super().__init__()
        self.session = session
        self.report = report

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="world-info"):
            yield Label(f"World info for this chat with {self.session.character.name}", classes="dialog-title")
            yield Label("Fired on the last reply", classes="section")
            yield Static("", id="fired")
            yield Label("Lorebooks of this chat (d detaches)", classes="section")
            yield OptionList(id="attached")
            yield Label("Stored lorebooks (Enter attaches; d deletes from the database)", classes="section")
            yield OptionList(id="stored")
            yield Static("i imports a SillyTavern world-info .json (or a card's book) and attaches it · f uses a "
                         "file as it is, read afresh each turn", classes="note")
            yield Label("The character's own lorebook (always used, after the chat's)", classes="section")
            yield Static(book_summary(self.session.character.lorebook), id="own-book")
        yield Footer()

    def on_mount(self) -> None:
        self.show()
        self.query_one("#fired", Static).update(self._fired())
        self.query_one("#stored" if not self.session.lore_attachments else "#attached", OptionList).focus()

    def _fired(self) -> Text:
        ctx = self.session.last_context
        if ctx is not None:
            return fired_summary(ctx.prompt.lore, "went into the prompt")
        messages = self.session.messages
        last = max((i for i, m in enumerate(messages) if m.role == "user" and i + 1 < len(messages)), default=-1)
        if last < 0:
            return fired_summary(None, "")
        try:  # not sent in this run: worked out again from the conversation (the choice depends on nothing else)
            prompt = self.session.build_prompt(None, messages[:last + 1], probe=True)
        except (HaruhiError, ValueError) as exc:
            return Text(f"cannot tell: {exc}", style="dim")
        return fired_summary(prompt.lore, "fired for the last reply")

    # -- lists ------------------------------------------------------------------------------------
    def _attached_option(self, attached: LoreAttachment) -> Option:
        text = Text(attached.name, style="bold")
        try:
            if attached.lorebook_id is not None:
                row = self.session.store.lorebook(attached.lorebook_id)
                book = parse_lorebook_text(row.data, row.name, row.name)
                text.append(f" · {len(book.entries)} entries · stored", style="dim")
            else:
                book = read_lorebook_file(attached.path)[0]
                text.append(f" · {len(book.entries)} entries · file {attached.path}", style="dim")
        except (HaruhiError, OSError) as exc:
            text.append(f" · not used: {exc}", style="red")
        return Option(text, id=str(attached.id))

    def _stored_option(self, row: StoredLorebook) -> Option:
        try:
            count = f"{len(parse_lorebook_text(row.data, row.name, row.name).entries)} entries"
        except HaruhiError:
            count = "cannot be read"
        source = f" · from {Path(row.source).name}" if row.source else ""
        return Option(Text.assemble((row.name, "bold"), (f" · {count}{source}", "dim")), id=str(row.id))

    def show(self) -> None:
        attachments = self.session.lore_attachments
        try:
            stored = self.session.store.lorebooks()
        except StoreError as exc:
            self.report(str(exc))
            stored = []
        in_use = {a.lorebook_id for a in attachments}
        self._fill("#attached", [self._attached_option(a) for a in attachments],
                   "(none: Enter on a stored lorebook attaches it, i imports one)")
        self._fill("#stored", [self._stored_option(row) for row in stored if row.id not in in_use],
                   "(none stored: i imports a SillyTavern world-info .json)")

    def _fill(self, selector: str, options: list[Option], empty: str) -> None:
        box = self.query_one(selector, OptionList)
        highlighted = box.highlighted
        box.clear_options()
        box.add_options(options or [Option(Text(empty, style="dim"), disabled=True)])
        if options:
            box.highlighted = min(highlighted or 0, len(options) - 1)

    def _highlighted(self, box: OptionList) -> int | None:
        if box.highlighted is None:
            return None
        option = box.get_option_at_index(box.highlighted)
        return int(option.id) if option.id else None

    # -- actions ----------------------------------------------------------------------------------
    def _use_book(self, source: int | str) -> bool:
        try:
            attached = self.session.attach_lorebook(source)
        except (HaruhiError, ValueError) as exc:
            self.report(str(exc))
            return False
        self.show()
        box = self.query_one("#attached", OptionList)
        box.highlighted = box.get_option_index(str(attached.id))
        self.notify(f"{attached.name} is used in this chat from the next reply", timeout=4)
        return True

    @on(OptionList.OptionSelected, "#stored")
    def _stored_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self._use_book(int(event.option.id))

    def action_import_book(self) -> None:
        def chosen(path: str | None) -> None:
            if not path:
                return
            try:
                stored = import_lorebook(self.session.store, path)
            except HaruhiError as exc:
                self.report(str(exc))
                return
            self._use_book(stored.id)

        self.app.push_screen(PathDialog("Import a lorebook", placeholder="path to a SillyTavern world-info .json",
                                        note="kept in the sessions database and attached to this chat"), chosen)

    def action_attach_file(self) -> None:
        def chosen(path: str | None) -> None:
            if path:
                self._use_book(path)

        self.app.push_screen(PathDialog("Use a lorebook file", placeholder="path to a SillyTavern world-info .json",
                                        note="read afresh each turn, so edits to the file apply"), chosen)

    def action_remove(self) -> None:
        focused = self.focused
        if not isinstance(focused, OptionList):
            return
        chosen = self._highlighted(focused)
        if chosen is None:
            return
        if focused.id == "attached":
            try:
                self.session.detach_lorebook(chosen)
            except StoreError as exc:
                self.report(str(exc))
            self.show()
            return
        if focused.id != "stored":
            return
        name = focused.get_option_at_index(focused.highlighted or 0).prompt

        def done(yes: bool | None) -> None:
            if yes:
                try:
                    self.session.store.delete_lorebook(chosen)
                except StoreError as exc:
                    self.report(str(exc))
                self.show()

        label = name.plain.split(" · ")[0] if isinstance(name, Text) else str(name)
        self.app.push_screen(ConfirmDialog(f"Delete the stored lorebook {label}? (chats that use it stop using "
                                           "it)"), done)

    def action_close(self) -> None:
        self.dismiss(None)
