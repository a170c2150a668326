"""Get more characters: the ChatHaruhi hub catalogue, downloaded into the library with a progress bar."""

from __future__ import annotations

from functools import partial

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from haruhi_tui.app.messages import CharactersChanged
from haruhi_tui.app.screens.download_progress import DownloadProgress
from haruhi_tui.app.services import Report
from haruhi_tui.services.character_hub import HubCharacter, catalogue, get_characters
from haruhi_tui.services.character_library import CharacterLibrary

NOTE = ("Enter downloads the highlighted one (resumable). ChatHaruhi's characters are CC BY-NC 4.0, RoleLLM's "
        "CC BY 4.0: see NOTICE.")


class GetCharactersScreen(DownloadProgress, ModalScreen[list[str]]):
    """The 127 characters of the ChatHaruhi hub datasets; the ones in the library are marked and cannot be
    picked. Enter runs :func:`~haruhi_tui.services.character_hub.get_characters` in a thread (on the app, so
    Esc closes the list and the download goes on). Dismisses with the folders added."""

    PROGRESS, STATUS = "get-progress", "get-status"

    BINDINGS = [Binding("escape", "close", "Close"),
                Binding("down", "move(1)", "Next", show=False),
                Binding("up", "move(-1)", "Previous", show=False)]

    def __init__(self, library: CharacterLibrary, report: Report) -> None:
        super().__init__()
        self.library = library
        self.report = report
        self.added: list[str] = []
        self.running = False
        self.by_folder = {c.folder: c for c in catalogue()}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog picker"):
            yield Label("Get more characters", classes="dialog-title")
            yield Input(placeholder="filter by name or work…", id="hub-filter")
            yield OptionList(*self._options(""), id="hub-characters")
            yield ProgressBar(total=1.0, show_eta=False, id="get-progress")
            yield Static(NOTE, id="get-status", classes="note")

    def _options(self, needle: str) -> list[Option]:
        needle = needle.casefold().strip()
        have = {e.key.casefold(): e.origin for e in self.library.entries()}
        out = []
        for c in self.by_folder.values():
            if needle and needle not in f"{c.display_name} {c.folder} {c.work} {c.collection}".casefold():
                continue
            label = Text(c.display_name, style="bold")
            label.append(f"  · {c.work}", style="italic")
            origin = have.get(c.folder.casefold())
            if origin:
                label.append(f"  [{origin}]", style="bold green")
            label.append(f"\n  {c.collection} · {c.source().licence}", style="dim")
            out.append(Option(label, id=c.folder, disabled=bool(origin)))
        return out

    def _refresh(self) -> None:
        options = self.query_one("#hub-characters", OptionList)
        options.clear_options()
        options.add_options(self._options(self.query_one("#hub-filter", Input).value))
        self._highlight_first()

    def _highlight_first(self) -> None:
        options = self.query_one("#hub-characters", OptionList)
        first = next((i for i in range(options.option_count) if not options.get_option_at_index(i).disabled), None)
        options.highlighted = first

    def on_mount(self) -> None:
        self._highlight_first()
        self.query_one("#hub-filter", Input).focus()

    def action_move(self, step: int) -> None:
        options = self.query_one("#hub-characters", OptionList)
        if step > 0:
            options.action_cursor_down()
        else:
            options.action_cursor_up()

    def action_close(self) -> None:
        self.dismiss(self.added)

    @on(Input.Changed, "#hub-filter")
    def _filter(self) -> None:
        self._refresh()

    @on(Input.Submitted, "#hub-filter")
    def _submit(self) -> None:
        options = self.query_one("#hub-characters", OptionList)
        if options.highlighted is not None:
            self._start(self.by_folder[options.get_option_at_index(options.highlighted).id])

    @on(OptionList.OptionSelected, "#hub-characters")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self._start(self.by_folder[event.option.id])

    def _start(self, character: HubCharacter) -> None:
        if self.running:
            self._status("one download at a time: wait for this one to finish")
            return
        self.running = True
        self.progress_bar.update(total=None, progress=0)
        self._status(f"asking the hub about {character.display_name}…")
        self.app.run_worker(partial(self.fetch, character), thread=True, group="get-characters", exclusive=True)

    def fetch(self, character: HubCharacter) -> None:
        def get(progress):
            result = get_characters([character], self.library, progress=progress)
            self.library.load()
            return result

        result = self._fetch(character.display_name, get)
        if result is None:
            return
        if result.missing:
            self.app.call_from_thread(self._failed, f"{character.display_name} is not on the hub (any more)")
            return
        self.app.call_from_thread(self._done, character)

    def _failed(self, message: str) -> None:
        self.running = False
        self.report(message)
        self._show_failure(message)

    def _done(self, character: HubCharacter) -> None:
        self.running = False
        self.added.append(character.folder)
        for screen in self.app.screen_stack:  # the character picker underneath lists them now
            screen.post_message(CharactersChanged())
        if not self.is_attached:
            self.app.notify(f"{character.display_name} is in the character list now (ctrl+n)", timeout=10)
            return
        self.progress_bar.update(total=1.0, progress=1.0)
        self._status(f"{character.display_name} added: Esc, then pick them from the list")
        self._refresh()
