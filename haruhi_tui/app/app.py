"""The haruhi-tui application: owns the sessions store, the characters and the loaded model.

Screens: :class:`~.screens.chat.ChatScreen` (the conversation), the character and model pickers, the
context view, help, and small dialogs. Slow things (reading 30 character folders, assembling the bundled
model, loading a GGUF, generating) happen in thread workers; failures become messages in the app,
never a crash: a broken database falls back to an in-memory one, a broken model leaves the chat usable.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from haruhi_tui.core.characters import Character, load_characters
from haruhi_tui.core.engine import DEFAULT_N_CTX, Engine, Sampling, interactive_threads, open_gguf
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.paths import data_dir, default_characters_dir, models_dir
from haruhi_tui.services.bundled_model import BUNDLED_NAME, default_gguf
from haruhi_tui.services.local_models import list_local_models
from haruhi_tui.store import MEMORY, Store, StoreError, default_db_path

from .screens.chat import ChatScreen
from .screens.dialogs import RenameDialog
from .screens.help import HelpScreen
from .screens.pick import BUNDLED, ModelPicker


class HaruhiApp(App[None]):
    """Chat with ChatHaruhi characters on a local GGUF model."""

    CSS_PATH = "app.tcss"
    TITLE = "haruhi-tui"
    BINDINGS = [Binding("f1", "help", "Help", show=False),
                Binding("f6", "jobs", "Jobs", show=False, tooltip="Train, convert, evaluate: the launcher")]

    def __init__(
        self,
        *,
        characters_dir: str | Path | None = None,
        model: str | Path | None = None,
        models_dirs: Iterable[str | Path] = (),
        db_path: str | Path | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        character: str | None = None,
        engine: Engine | None = None,
        sampling: Sampling | None = None,
        save_interval: float = 0.5,
        db_timeout: float = 2.0,
    ) -> None:
        super().__init__()
        self.characters_dir = Path(characters_dir) if characters_dir else default_characters_dir()
        self.model_arg = str(model) if model else None
        self.models_dirs = [models_dir(), *[Path(d) for d in models_dirs]]
        if self.model_arg:
            self.models_dirs.append(Path(self.model_arg).expanduser().parent)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or interactive_threads()
        self.start_character = character
        self.sampling = sampling
        self.save_interval = save_interval
        self.show_thinking = False
        self.problems: list[str] = []  # every error shown this run, newest last (notifications expire)
        self.characters: dict[str, Character] = {}
        self.imported: set[str] = set()  # folders of characters imported from cards (marked in the picker)
        self.characters_problem = ""
        self.engine = engine
        self.engine_choice = str(engine.path) if engine else ""
        self.engine_error = ""
        self.model_loading = False
        self.engine_ready = threading.Event()
        self.compare_engine: Engine | None = None  # the second model of a compare (ctrl+k); None: the same one
        if engine is not None:
            self.engine_ready.set()
        self.db_path = Path(db_path) if db_path else default_db_path()
        self.store_problem = ""
        try:
            self.store = Store(self.db_path, timeout=db_timeout)
        except StoreError as exc:
            self.store_problem = f"{exc}. Chats of this run are kept in memory only."
            self.store = Store(MEMORY)

    def report(self, message: str, timeout: float = 10) -> None:
        """Show an error as a notification (the app keeps running) and keep it in :attr:`problems`."""
        self.problems.append(message)
        self.notify(message, severity="error", timeout=timeout)

    # -- startup ---------------------------------------------------------------------------------
    def get_default_screen(self) -> Screen:
        return ChatScreen()

    @property
    def chat_screen(self) -> ChatScreen:
        return self.screen_stack[0]  # type: ignore[return-value]  # the default screen is always at the bottom

    def start(self) -> None:
        """Called by the chat screen once it is on screen: report problems, start the slow loading."""
        if self.store_problem:
            self.report(self.store_problem, timeout=15)
            self.chat_screen.set_status("sessions are not being saved (see the message)")
        self.chat_screen.show_progress(False)
        self.load_characters()
        if self.engine is None:
            choice = self.model_arg or self._pref("last_model") or BUNDLED
            if choice != BUNDLED and not self.model_arg and not Path(choice).exists():
                choice = BUNDLED
            self.load_model(choice)
        else:
            self.chat_screen.update_title()

    def _pref(self, key: str, default=None):
        try:
            return self.store.pref(key, default)
        except StoreError:
            return default

    def input_history(self) -> list[str]:
        try:
            return self.store.recent_user_lines()
        except StoreError:
            return []

    @property
    def imported_dir(self) -> Path:
        """Where imported character cards become character folders."""
        return data_dir() / "characters"

    def _read_characters(self) -> tuple[list[Character], set[str], str]:
        """The configured characters plus the imported ones (a clash keeps the configured one)."""
        try:
            characters = load_characters(self.characters_dir)
            problem = ""
        except HaruhiError as exc:
            characters, problem = [], f"{exc}. Pass --characters or set $HARUHI_CHARACTERS."
        imported: set[str] = set()
        own = self.imported_dir
        if own.resolve() == self.characters_dir.resolve():
            return characters, {c.folder for c in characters}, problem
        if own.is_dir() and any(own.iterdir()):
            try:
                extra = load_characters(own)
            except HaruhiError:
                extra = []
            known = {c.folder for c in characters}
            for c in extra:
                if c.folder not in known:
                    characters.append(c)
                    imported.add(c.folder)
            if imported and problem:
                problem = ""
        return characters, imported, problem

    @work(thread=True, group="characters")
    def load_characters(self) -> None:
        characters, imported, problem = self._read_characters()
        self.call_from_thread(self._characters_loaded, characters, problem, imported)

    async def _characters_loaded(self, characters: list[Character], problem: str,
                                 imported: set[str] = frozenset()) -> None:
        self.characters = {c.folder: c for c in characters}
        self.imported = set(imported)
        self.characters_problem = problem
        if problem:
            self.report(problem, timeout=15)
        screen = self.chat_screen
        if self.start_character:
            wanted = self.start_character.casefold()
            match = next((c for c in characters if wanted in (c.folder.casefold(), c.name.casefold())), None)
            if match is not None:
                await screen.start_chat(match.folder)
                return
            self.report(f"no character {self.start_character!r} in {self.characters_dir}")
        try:
            chats = self.store.chats(limit=1)
        except StoreError:
            chats = []
        if chats and chats[0].character in self.characters:
            await screen.resume_chat(chats[0].id)
        else:
            screen.action_new_chat()

    def character_list(self) -> list[Character]:
        return sorted(self.characters.values(), key=lambda c: c.folder.casefold())

    # -- the model -------------------------------------------------------------------------------
    def model_label(self) -> str:
        if self.model_loading:
            return "loading model…"
        if self.engine is None:
            return "no model (ctrl+o)"
        return f"{self.engine.name} ({self.engine.style})"

    def model_path_str(self) -> str:
        return str(self.engine.path) if self.engine else ""

    def action_pick_model(self) -> None:
        models = [m for m in list_local_models(self.models_dirs) if not m.bundled]

        def picked(choice: str | None) -> None:
            if choice:
                self.load_model(choice)

        self.push_screen(ModelPicker(models, self.model_label()), picked)

    @work(thread=True, exclusive=True, group="model")
    def load_model(self, choice: str) -> None:
        """Load a GGUF (or assemble and load the bundled one) without freezing the UI."""
        self.model_loading = True
        self.engine_ready.clear()
        label = BUNDLED_NAME if choice == BUNDLED else Path(choice).name
        self.call_from_thread(self._model_progress, f"loading {label}…")
        try:
            if choice == BUNDLED:
                path = default_gguf(lambda fraction, what: self.call_from_thread(self._model_progress, what + "…",
                                                                                  fraction))
            else:
                path = Path(choice).expanduser()
            engine = open_gguf(path, n_ctx=self.n_ctx, n_threads=self.n_threads)
        except HaruhiError as exc:
            self.call_from_thread(self._model_failed, str(exc))
            return
        except Exception as exc:  # a model must never take the app down
            self.call_from_thread(self._model_failed, f"could not load {choice}: {type(exc).__name__}: {exc}")
            return
        self.call_from_thread(self._model_loaded, engine, choice)

    def _model_progress(self, text: str, fraction: float | None = None) -> None:
        screen = self.chat_screen
        screen.show_progress(True, fraction)
        screen.set_status(text)
        screen.update_title()

    def _model_loaded(self, engine: Engine, choice: str) -> None:
        self.engine, self.engine_choice, self.engine_error = engine, choice, ""
        self.model_loading = False
        self.engine_ready.set()
        try:
            self.store.set_pref("last_model", choice)
        except StoreError:
            pass
        screen = self.chat_screen
        screen.show_progress(False)
        screen.set_status(f"{engine.name} ready · {engine.style} style · context {engine.n_ctx} tokens")
        screen.update_title()

    def _model_failed(self, error: str) -> None:
        self.model_loading = False
        self.engine_ready.set()
        self.engine_error = error
        screen = self.chat_screen
        screen.show_progress(False)
        screen.set_status("model not loaded: ctrl+o picks another")
        screen.update_title()
        self.report(error, timeout=15)

    def compare_runs(self) -> list[tuple[Engine, Sampling | None, str]]:
        """What ctrl+k compares: the chat's model against the compare model, or (no compare model) the
        chat's model against itself at a warmer temperature."""
        assert self.engine is not None
        first = self.sampling
        base = first or Sampling()
        if self.compare_engine is not None and self.compare_engine is not self.engine:
            label = self.compare_engine.name
            if self.compare_engine.path == self.engine.path:
                label += " (2nd copy)"
            return [(self.engine, first, self.engine.name), (self.compare_engine, first, label)]
        warm = Sampling(temperature=min(1.5, base.temperature + 0.5) or 0.7, top_p=base.top_p, top_k=base.top_k,
                        min_p=base.min_p, repeat_penalty=base.repeat_penalty, max_tokens=base.max_tokens)
        return [(self.engine, first, f"{self.engine.name} · temp {base.temperature:g}"),
                (self.engine, warm, f"{self.engine.name} · temp {warm.temperature:g}")]

    def action_pick_compare_model(self) -> None:
        models = [m for m in list_local_models(self.models_dirs) if not m.bundled]

        def picked(choice: str | None) -> None:
            if choice:
                self.load_compare_model(choice)

        self.push_screen(ModelPicker(models, "compare with"), picked)

    @work(thread=True, exclusive=True, group="compare-model")
    def load_compare_model(self, choice: str) -> None:
        try:
            path = default_gguf() if choice == BUNDLED else Path(choice).expanduser()
            engine = open_gguf(path, n_ctx=self.n_ctx, n_threads=self.n_threads)
        except HaruhiError as exc:
            self.call_from_thread(self.report, str(exc))
            return
        except Exception as exc:  # a model must never take the app down
            self.call_from_thread(self.report, f"could not load {choice}: {type(exc).__name__}: {exc}")
            return

        def loaded() -> None:
            self.compare_engine = engine
            self.notify(f"ctrl+k compares {self.model_label()} with {engine.name}")

        self.call_from_thread(loaded)

    def wait_for_engine(self, cancel: threading.Event) -> Engine | None:
        """Block a worker until a model is ready; None if loading failed or the turn was stopped first."""
        while True:
            if self.engine is not None and not self.model_loading:
                return self.engine
            if cancel.is_set() or (not self.model_loading and self.engine_error):
                return None
            self.engine_ready.wait(0.1)

    # -- commands --------------------------------------------------------------------------------
    def action_jobs(self) -> None:
        from .screens.jobs import JobsScreen

        if not isinstance(self.screen, JobsScreen):
            self.push_screen(JobsScreen())

    def action_help(self) -> None:
        bindings = [b for b in ChatScreen.BINDINGS if isinstance(b, Binding)]
        self.push_screen(HelpScreen(bindings))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        chat = self.chat_screen
        yield SystemCommand("New chat", "Pick a character to talk to (ctrl+n)", chat.action_new_chat)
        yield SystemCommand("Pick model", "Bundled Gemma, a local GGUF, or a path (ctrl+o)", self.action_pick_model)
        yield SystemCommand("Regenerate reply", "A new reply to your last message (ctrl+r)", chat.action_regenerate)
        yield SystemCommand("Stop reply", "Stop the reply being generated (Esc)", chat.action_stop)
        yield SystemCommand("Toggle thinking", "Show or hide gpt-oss analysis (ctrl+t)", chat.action_toggle_thinking)
        yield SystemCommand("Context view", "Exactly what the model was sent (F2)", chat.action_context)
        yield SystemCommand("Toggle chat list", "Show or hide saved chats (ctrl+b)", chat.action_toggle_sidebar)
        yield SystemCommand("Rename chat", "Rename the current chat", chat.rename_chat)
        yield SystemCommand("Delete chat", "Delete the current chat", chat.delete_chat)
        yield SystemCommand("Your name", "Who you play in this chat (default: the character's usual partner)",
                            self.ask_user_name)
        yield SystemCommand("Export chat", "Write the chat as Markdown, JSONL or ShareGPT JSON", self.export_chat)
        yield SystemCommand("Import character card", "A Character Card V2 .json or .png becomes a character",
                            self.action_import_card)
        yield SystemCommand("Export character card", "The current character as a Character Card V2 .png or .json",
                            self.action_export_card)
        yield SystemCommand("Download model", "A GGUF from the Hugging Face hub into the models folder",
                            self.action_download_model)
        yield SystemCommand("Memory", "Pinned facts and the summary of earlier turns (F3)", chat.action_memory)
        yield SystemCommand("Compare replies", "Your line answered by two models side by side (ctrl+k)",
                            chat.action_compare)
        yield SystemCommand("Compare with model", "Pick the second model that ctrl+k compares with",
                            self.action_pick_compare_model)
        yield SystemCommand("Edit message", "Edit the selected message (alt+up/down selects); old version kept (F4)",
                            chat.action_edit)
        for effort in ("low", "medium", "high"):
            yield SystemCommand(
                f"Reasoning effort: {effort}", f"gpt-oss thinks {effort} for this character (default low)",
                lambda effort=effort: self.set_reasoning_effort(effort),
            )
        yield SystemCommand("Jobs", "Train, watch, convert and evaluate models (F6)", self.action_jobs)
        yield SystemCommand("Help", "Keys and what they do (F1)", self.action_help)

    def ask_user_name(self) -> None:
        session = self.chat_screen.session
        if session is None:
            self.notify("no chat yet", severity="warning")
            return

        def done(name: str | None) -> None:
            if name:
                session.set_user_name(name)
                self.notify(f"you are {session.settings.user_name} in this chat")

        self.push_screen(RenameDialog(session.settings.user_name, "Your name in this chat"), done)

    def set_reasoning_effort(self, effort: str) -> None:
        session = self.chat_screen.session
        if session is None:
            self.notify("no chat yet", severity="warning")
            return
        session.set_reasoning_effort(effort)
        self.notify(f"reasoning effort {effort} for {session.character.name}")

    def export_chat(self) -> None:
        """Ask for a format and path (default: the exports folder), then write the chat through export.py."""
        session = self.chat_screen.session
        if session is None:
            self.notify("no chat to export", severity="warning")
            return
        from .screens.cards import ExportChatDialog

        def chosen(path: str | None) -> None:
            if path:
                self.write_chat_export(Path(path))

        default = data_dir() / "exports" / f"chat-{session.chat.id}.md"
        self.push_screen(ExportChatDialog(default), chosen)

    def write_chat_export(self, path: Path) -> Path | None:
        session = self.chat_screen.session
        if session is None:
            return None
        from haruhi_tui.services.export import ChatRecord, export_chat

        turns = tuple(session._turn(m, "chat") for m in session.messages
                      if m.role in ("user", "assistant") and m.content.strip())
        record = ChatRecord(session.title, session.character, turns, Path(session.chat.model).name)
        return self._write_reported(lambda: export_chat(record, path), path, "exported")

    # -- character cards -------------------------------------------------------------------------
    def action_import_card(self) -> None:
        from .screens.cards import PathDialog

        def chosen(path: str | None) -> None:
            if path:
                self.import_card(Path(path))

        self.push_screen(PathDialog("Import character card", placeholder="path to a Character Card V2 .json or .png",
                                    note=f"becomes a character folder in {self.imported_dir}"), chosen)

    def import_card(self, path: Path) -> Character | None:
        """Import a card into the app's characters folder; a bad card is a notification, nothing else."""
        from haruhi_tui.core.cards import import_card
        from haruhi_tui.core.characters import load_character

        try:
            character = import_card(path, self.imported_dir)
            if character.folder in self.characters:  # a configured character of the same folder name
                folder = self.imported_dir / character.folder
                n = 1
                while (target := self.imported_dir / f"{character.folder}_card{n if n > 1 else ''}").exists() \
                        or target.name in self.characters:
                    n += 1
                folder.rename(target)
                character = load_character(target, speaker=character.name)
        except HaruhiError as exc:
            self.report(f"cannot import {path.name}: {exc}")
            return None
        except OSError as exc:
            self.report(f"cannot import {path.name}: {exc.strerror or exc}")
            return None
        self.characters[character.folder] = character
        self.imported.add(character.folder)
        self.characters_problem = ""
        from .screens.pick import CharacterPicker

        for screen in self.screen_stack:
            if isinstance(screen, CharacterPicker):
                screen.set_characters(self.character_list(), self.imported)
        self.notify(f"imported {character.name} ({character.folder}): ctrl+n to talk to them")
        return character

    def action_export_card(self) -> None:
        session = self.chat_screen.session
        if session is None:
            self.notify("no character yet: start a chat first", severity="warning")
            return
        from .screens.cards import PathDialog

        character = session.character

        def chosen(path: str | None) -> None:
            if path:
                self.export_card(character, Path(path))

        default = data_dir() / "exports" / f"{character.folder}.png"
        self.push_screen(PathDialog(f"Export {character.name} as a character card", str(default),
                                    note=".png (card inside the image) or .json"), chosen)

    def _write_reported(self, write, path: Path, done: str) -> Path | None:
        """Run a file export; a failure becomes a message in the app (the app keeps running)."""
        try:
            written = write()
        except HaruhiError as exc:
            self.report(str(exc))
            return None
        except OSError as exc:
            self.report(f"cannot write {path}: {exc.strerror or exc}; choose another path")
            return None
        self.notify(f"{done}: {written}", timeout=10)
        return written

    def export_card(self, character: Character, path: Path) -> Path | None:
        from haruhi_tui.core.cards import export_card

        return self._write_reported(lambda: export_card(character, path), path, "card written")

    # -- downloads -------------------------------------------------------------------------------
    def action_download_model(self) -> None:
        from .screens.download import DownloadDialog

        def done(path: str | None) -> None:
            if path:
                self.notify(f"downloaded {path}: ctrl+o picks it", timeout=15)

        self.push_screen(DownloadDialog(), done)

    async def action_quit(self) -> None:
        await self.chat_screen.stop_and_wait()
        self.exit()
