"""Pickers: which character to talk to, which model to talk with."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from haruhi_tui.app.messages import CharactersChanged
from haruhi_tui.app.services import Report
from haruhi_tui.app.widgets.message import character_label
from haruhi_tui.core.fsutil import human_bytes
from haruhi_tui.services.bundled_model import BUNDLED_NAME
from haruhi_tui.services.character_library import CharacterLibrary
from haruhi_tui.services.local_models import LocalModel
from haruhi_tui.services.model_service import BUNDLED

#: The last entry of the character picker: the hub catalogue (not a folder name: those cannot start with a dot).
GET_MORE = ".get-more"


class CharacterPicker(ModalScreen[str | None]):
    """The library's characters (bundled, downloaded, imported, your folder): name, source work and a first
    line; type to filter, up/down to move, Enter to pick, F5 to import a card, and a last entry "Get more
    characters" that opens the hub catalogue."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("down", "move(1)", "Next", show=False),
        Binding("up", "move(-1)", "Previous", show=False),
        Binding("f5", "app.import_card", "Import card",
                tooltip="Import a character card (.png, .json, .charx) as a new character"),
    ]

    def __init__(self, library: CharacterLibrary, report: Report | None = None) -> None:
        super().__init__()
        self.library = library
        self.report = report or (lambda message, timeout=10: self.notify(message, severity="error", timeout=timeout))
        self.characters = library.listing()
        self.problem = library.problem
        self.imported = set(library.imported)
        self.shown_filter = ""  # the filter the list shows (typing can run ahead of it on a busy machine)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog picker"):
            yield Label("Pick a character", classes="dialog-title")
            if self.problem or not self.characters:
                yield Static(self.problem or "No characters found.", classes="problem")
            yield Input(placeholder="filter by name or work…", id="filter")
            yield OptionList(*self._options(""), id="characters")
            yield Static("Enter opens · F5 imports a character card · Esc closes", classes="note")

    def _options(self, needle: str) -> list[Option]:
        needle = needle.casefold().strip()
        out = []
        for c in self.characters:
            origin = "imported" if c.folder in self.imported else (
                "downloaded" if c.folder in self.library.downloaded else "")
            hay = f"{c.name} {c.folder} {c.source_work} {origin}".casefold()
            if needle and needle not in hay:
                continue
            label = character_label(c)
            if origin:
                label.append(f"  [{origin}]", style="bold green")
            if c.first_line:
                line = c.first_line if len(c.first_line) <= 60 else c.first_line[:59] + "…"
                label.append(f"\n  「{line}」", style="dim")
            out.append(Option(label, id=c.folder))
        more = Text("Get more characters…", style="bold")
        more.append("\n  127 from the ChatHaruhi hub datasets (ChatHaruhi and RoleLLM)", style="dim")
        return [*out, Option(more, id=GET_MORE)]

    def on_mount(self) -> None:
        options = self.query_one("#characters", OptionList)
        if options.option_count:
            options.highlighted = 0
        self.query_one("#filter", Input).focus()

    @on(CharactersChanged)
    def _characters_changed(self) -> None:
        """Show the library's new list (after an import), keeping the filter."""
        self.characters, self.imported = self.library.listing(), set(self.library.imported)
        self.show_matches(self.query_one("#filter", Input).value)
        for problem in self.query(".problem"):
            problem.remove()

    def action_move(self, step: int) -> None:
        options = self.query_one("#characters", OptionList)
        if options.option_count:
            options.highlighted = max(0, min(options.option_count - 1, (options.highlighted or 0) + step))

    def show_matches(self, needle: str) -> None:
        options = self.query_one("#characters", OptionList)
        options.clear_options()
        options.add_options(self._options(needle))
        if options.option_count:
            options.highlighted = 0
        self.shown_filter = needle

    @on(Input.Changed, "#filter")
    def _filter(self, event: Input.Changed) -> None:
        self.show_matches(event.value)

    @on(Input.Submitted, "#filter")
    def _pick_highlighted(self, event: Input.Submitted) -> None:
        """Enter opens the highlighted character of what was typed, even when Enter overtook the filter."""
        if event.value != self.shown_filter:
            self.show_matches(event.value)
        options = self.query_one("#characters", OptionList)
        if options.option_count:
            self._pick(options.get_option_at_index(options.highlighted or 0).id)

    @on(OptionList.OptionSelected, "#characters")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self._pick(event.option.id)

    def _pick(self, folder: str | None) -> None:
        if folder != GET_MORE:
            self.dismiss(folder)
            return
        from .get_characters import GetCharactersScreen

        def closed(added: list[str] | None) -> None:
            self._characters_changed()
            options = self.query_one("#characters", OptionList)
            ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
            if added and added[0] in ids:  # the first new one is highlighted: Enter talks to them
                options.highlighted = ids.index(added[0])

        self.app.push_screen(GetCharactersScreen(self.library, self.report), closed)


def describe_model(model: LocalModel) -> Text:
    if model.broken:
        return Text(f"{model.path.name}  ({model.broken})", style="red")
    label = Text(model.name, style="bold")
    details = [model.architecture, model.parameters_label, model.quantization, model.style,
               human_bytes(model.size_bytes)]
    label.append("  " + " · ".join(d for d in details if d), style="dim")
    label.append(f"\n  {model.path}", style="dim")
    return label


class ModelPicker(ModalScreen[str | None]):
    """The bundled default, GGUF files found in the models folders, or any path typed in."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, models: list[LocalModel], *, current: str = "", heading: str = "Pick a model") -> None:
        super().__init__()
        self.models = models
        self.current = current  # the model in use now, said under the list
        self.heading = heading

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog picker"):
            yield Label(self.heading, classes="dialog-title")
            bundled = Text(BUNDLED_NAME, style="bold") + Text(
                "\n  a small demo model: quick and offline, but its replies often wander"
                "\n  for real role-play: ctrl+p → Download model", style="dim")
            options = [Option(bundled, id=BUNDLED)]
            options += [Option(describe_model(m), id=str(m.path), disabled=bool(m.broken)) for m in self.models]
            yield OptionList(*options, id="models")
            yield Input(placeholder="or type a path to a .gguf and press Enter", id="model-path")
            if self.current:
                yield Static(f"now: {self.current}", classes="note")

    def on_mount(self) -> None:
        self.query_one("#models", OptionList).focus()

    @on(OptionList.OptionSelected, "#models")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    @on(Input.Submitted, "#model-path")
    def _typed(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(str(Path(event.value.strip()).expanduser()))
