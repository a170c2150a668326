"""Who the user plays in a chat: the character's usual partner (阿虚 for 春日) or a stored persona, a name and a
description that goes into the system prompt (SillyTavern's personas). Personas are kept in the sessions
database, so every chat (and ``haruhi chat --persona NAME``) can use them; the choice is stored with the chat.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from haruhi_tui.app.services import Report
from haruhi_tui.core.roleplay import UserPersona, substitute_macros
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.store import Persona, StoreError

from .dialogs import ConfirmDialog, TextDialog

DEFAULT = "default"  # the option id of the character's usual partner


def _option(persona: UserPersona, character: str, note: str, current: bool, option_id: str) -> Option:
    """A persona as the list shows it: a mark if this chat uses it, its name, its description as it reads."""
    text = Text("● " if current else "  ", style="bold green")
    text.append(persona.name, style="bold")
    if note:
        text.append(f"  {note}", style="italic dim")
    if persona.description:
        described = substitute_macros(persona.description, user=persona.name, char=character)
        line = " ".join(described.split())
        text.append(f"\n    {line if len(line) <= 70 else line[:69] + '…'}", style="dim")
    return Option(text, id=option_id)


class PersonaScreen(Screen[bool]):
    """Pick who you play in this chat (Enter), add (a), edit (e) or delete (d) stored personas, or play under
    just another name (n). Dismissed with True when the chat's persona changed (the chat redraws its lines)."""

    DEFAULT_CSS = """
    #persona { padding: 0 1; }
    #personas { height: auto; max-height: 14; }
    """

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("a", "add", "Add"),
        Binding("e", "edit", "Edit"),
        Binding("d,delete", "delete", "Delete"),
        Binding("n", "name_only", "Just a name"),
    ]

    def __init__(self, session: ChatSession, report: Report) -> None:
        super().__init__()
        self.session = session
        self.report = report
        self.changed = False

    def compose(self) -> ComposeResult:
        with Vertical(id="persona"):
            yield Label(f"Who you play with {self.session.character.name}", classes="dialog-title")
            yield Static("", id="persona-now")
            yield OptionList(id="personas")
            yield Static("Enter plays the highlighted persona in this chat · a adds · e edits · d deletes · "
                         "n plays under just a name. A persona's description goes into every prompt "
                         "({{user}} is its name, {{char}} the character's).", classes="note")
        yield Footer()

    def on_mount(self) -> None:
        self.show()
        self.query_one("#personas", OptionList).focus()

    # -- what is on screen ------------------------------------------------------------------------
    def stored(self) -> list[Persona]:
        try:
            return self.session.store.personas()
        except StoreError as exc:
            self.report(str(exc))
            return []

    def show(self) -> None:
        session = self.session
        now, chosen = session.persona, session.chat.persona_id
        default = UserPersona.default_for(session.character)
        plain = chosen is None and now.name != default.name  # a name set for this chat, no stored persona
        where = "a stored persona" if chosen is not None else "a name only" if plain else "the character's default"
        self.query_one("#persona-now", Static).update(Text.assemble("In this chat you are ", (now.name, "bold"),
                                                                    f" ({where})."))
        char = session.character.name
        options = [_option(default, char, "the character's default", chosen is None and not plain, DEFAULT)]
        if plain:
            options.append(_option(now, char, "a name for this chat only", True, "plain"))
        options += [_option(UserPersona(p.name, p.description), char, "", p.id == chosen, str(p.id))
                    for p in self.stored()]
        box = self.query_one("#personas", OptionList)
        highlighted = box.highlighted
        box.clear_options()
        box.add_options(options)
        box.highlighted = min(highlighted or 0, len(options) - 1)

    def _highlighted(self) -> str | None:
        box = self.query_one("#personas", OptionList)
        return None if box.highlighted is None else box.get_option_at_index(box.highlighted).id

    def _persona(self, option_id: str | None) -> Persona | None:
        if option_id is None or not option_id.isdigit():
            return None
        return next((p for p in self.stored() if p.id == int(option_id)), None)

    # -- actions ----------------------------------------------------------------------------------
    def _use(self, choice: int | str | None) -> None:
        try:
            persona = self.session.set_persona(choice)
        except (StoreError, ValueError) as exc:
            self.report(str(exc))
            return
        self.changed = True
        self.notify(f"you are {persona.name} in this chat", timeout=3)
        self.show()

    @on(OptionList.OptionSelected, "#personas")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        option_id = event.option.id
        if option_id == DEFAULT:
            self._use(None)
        elif option_id and option_id.isdigit():
            self._use(int(option_id))

    def action_add(self) -> None:
        def done(result: tuple[str, str] | None) -> None:
            if result is None:
                return
            try:
                added = self.session.store.add_persona(*result)
            except (StoreError, ValueError) as exc:
                self.report(str(exc))
                return
            self.show()
            box = self.query_one("#personas", OptionList)
            box.highlighted = box.get_option_index(str(added.id))

        self.app.push_screen(PersonaDialog("New persona"), done)

    def action_edit(self) -> None:
        option_id = self._highlighted()
        persona = self._persona(option_id)
        if persona is None:
            self.notify("only stored personas can be edited: a adds one of your own", severity="warning")
            return

        def done(result: tuple[str, str] | None) -> None:
            if result is None:
                return
            try:
                self.session.store.update_persona(persona.id, name=result[0], description=result[1])
            except (StoreError, ValueError) as exc:
                self.report(str(exc))
                return
            if self.session.chat.persona_id == persona.id:
                self.changed = True
            self.show()

        self.app.push_screen(PersonaDialog("Edit persona", persona.name, persona.description), done)

    def action_delete(self) -> None:
        persona = self._persona(self._highlighted())
        if persona is None:
            return

        def done(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.session.store.delete_persona(persona.id)
                if self.session.chat.persona_id == persona.id:  # like every chat that used it: the name stays
                    self.session.set_persona(persona.name)
            except (StoreError, ValueError) as exc:
                self.report(str(exc))
            self.show()

        self.app.push_screen(ConfirmDialog(f"Delete the persona {persona.name}? Chats that use it keep the name, "
                                           "without the description."), done)

    def action_name_only(self) -> None:
        def done(name: str | None) -> None:
            if name:
                self._use(name)

        self.app.push_screen(TextDialog("Your name in this chat", self.session.settings.user_name), done)

    def action_close(self) -> None:
        self.session.persona  # a stored persona renamed here: the chat's name follows it now
        self.dismiss(self.changed)


class PersonaDialog(ModalScreen[tuple[str, str] | None]):
    """A persona's name and description; ctrl+s saves, Esc cancels."""

    DEFAULT_CSS = "#persona-description { height: 8; }"

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, heading: str, name: str = "", description: str = "") -> None:
        super().__init__()
        self.heading, self.initial, self.description = heading, name, description

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.heading, classes="dialog-title")
            yield Input(self.initial, placeholder="name (what the character calls you: {{user}})", id="persona-name")
            yield Label("Description (goes into the prompt; ctrl+s saves)", classes="section")
            yield TextArea(self.description, soft_wrap=True, show_line_numbers=False, id="persona-description")
            yield Static("", id="persona-problem", classes="problem")

    def on_mount(self) -> None:
        self.query_one("#persona-name", Input).focus()

    @on(Input.Submitted, "#persona-name")
    def _next(self) -> None:
        self.query_one("#persona-description", TextArea).focus()

    def action_save(self) -> None:
        name = " ".join(self.query_one("#persona-name", Input).value.split())
        if not name:
            self.query_one("#persona-problem", Static).update("a persona needs a name")
            self.query_one("#persona-name", Input).focus()
            return
        self.dismiss((name, self.query_one("#persona-description", TextArea).text.strip()))
