"""New group chat: pick two or more characters for one scene, in the order they take turns.

Like the character picker: type to filter, the names in their colours with the work they come from. Enter in the
filter (or space in the list) adds or removes the highlighted character; the order they are added in is the
order they speak in turn. ctrl+s starts the scene.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, SelectionList, Static
from textual.widgets.selection_list import Selection

from haruhi_tui.app.widgets.message import character_label
from haruhi_tui.services.character_library import CharacterLibrary


class GroupPicker(ModalScreen["list[str] | None"]):
    """Dismisses with the chosen characters' folders in turn order (None: cancelled)."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("ctrl+s", "start", "Start the scene"),
        Binding("down", "focus_list", "List", show=False),
    ]

    def __init__(self, library: CharacterLibrary) -> None:
        super().__init__()
        self.characters = library.listing()
        self.names = {c.folder: c.name for c in self.characters}
        self.problem = library.problem
        self.chosen: list[str] = []  # folders, in the order they were picked: the order they take turns

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog picker"):
            yield Label("New group chat: pick two or more characters", classes="dialog-title")
            if self.problem or not self.characters:
                yield Static(self.problem or "No characters found.", classes="problem")
            yield Input(placeholder="filter by name or work… (Enter or space adds, ctrl+s starts)", id="filter")
            yield SelectionList[str](*self._selections(""), id="members")
            yield Static("", id="cast", classes="note")

    def on_mount(self) -> None:
        self._show_cast()
        self.query_one("#filter", Input).focus()

    def _selections(self, needle: str) -> list[Selection[str]]:
        needle = needle.casefold().strip()
        out = []
        for c in self.characters:
            if needle and needle not in f"{c.name} {c.folder} {c.source_work}".casefold():
                continue
            label = character_label(c)
            out.append(Selection(label, c.folder, c.folder in self.chosen))
        return out

    @property
    def members(self) -> SelectionList[str]:
        return self.query_one("#members", SelectionList)

    def _show_cast(self) -> None:
        names = ", ".join(self.names[f] for f in self.chosen) or "nobody yet"
        ready = "ctrl+s starts" if len(self.chosen) > 1 else "pick two or more"
        self.query_one("#cast", Static).update(f"In the scene, in turn order: {names} — {ready}")

    @on(Input.Changed, "#filter")
    def _filter(self, event: Input.Changed) -> None:
        members = self.members
        with members.prevent(SelectionList.SelectedChanged):
            members.clear_options()
            members.add_options(self._selections(event.value))
        if members.option_count:
            members.highlighted = 0

    @on(Input.Submitted, "#filter")
    def _toggle_highlighted(self) -> None:
        members = self.members
        if members.option_count:
            members.toggle(members.get_option_at_index(members.highlighted or 0).value)
            self.query_one("#filter", Input).value = ""  # ready to type the next name

    @on(SelectionList.SelectedChanged, "#members")
    def _changed(self) -> None:
        members = self.members
        shown = {members.get_option_at_index(i).value for i in range(members.option_count)}
        selected = members.selected
        self.chosen = [f for f in self.chosen if f not in shown or f in selected]
        self.chosen += [f for f in selected if f not in self.chosen]
        self._show_cast()

    def action_focus_list(self) -> None:
        self.members.focus()

    def action_start(self) -> None:
        if len(self.chosen) < 2:
            self.notify("a group chat needs two or more characters", severity="warning")
            return
        self.dismiss(list(self.chosen))
