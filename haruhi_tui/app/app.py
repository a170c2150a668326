"""The haruhi-tui application: composes the services and the screens.

The services (:mod:`haruhi_tui.services`: the sessions store, the models, the character library, exports)
know nothing of Textual; the screens get them in one :class:`~.services.Services` object and never reach
into the App. The App starts the slow work in thread workers (reading 30 character folders, assembling the
bundled model, loading a GGUF) and posts what happened to the screens as messages (:mod:`.messages`).
Failures become messages in the app, never a crash: a broken database falls back to an in-memory one, a
broken model leaves the chat usable, a background task that fails for any reason is a message (its traceback
in the log, :mod:`.crash`). Any other unexpected error ends the app: one line naming the log, exit code 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import WorkerFailed

from haruhi_tui.core.characters import Character
from haruhi_tui.core.engine import DEFAULT_N_CTX, Engine, Sampling
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.paths import data_dir, models_dir
from haruhi_tui.services.character_library import CharacterLibrary
from haruhi_tui.services.export import export_session
from haruhi_tui.services.jobs import Launcher
from haruhi_tui.services.model_service import ModelService, choice_name
from haruhi_tui.store import MEMORY, Store, StoreError, default_db_path

from . import crash
from .messages import CharactersChanged, CharactersLoaded, LoadModel, ModelFailed, ModelLoading, ModelReady
from .roleplay_commands import roleplay_commands
from .screens.chat import ChatScreen
from .screens.dialogs import TextDialog
from .screens.help import HelpScreen
from .screens.pick import CharacterPicker, ModelPicker
from .services import Services


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
        self.model_arg = str(model) if model else None
        self.start_character = character
        self.problems: list[str] = []  # every error shown this run, newest last (notifications expire)
        self.crash_message = ""  # set when an unexpected error ends the app (main prints it)
        self.db_path = Path(db_path) if db_path else default_db_path()
        store_problem = ""
        try:
            self.store = Store(self.db_path, timeout=db_timeout)
        except StoreError as exc:
            store_problem = f"{exc}. Chats of this run are kept in memory only."
            self.store = Store(MEMORY)
        dirs = [models_dir(), *[Path(d) for d in models_dirs]]
        if self.model_arg:
            dirs.append(Path(self.model_arg).expanduser().parent)
        self.models = ModelService(n_ctx=n_ctx, n_threads=n_threads, engine=engine, models_dirs=dirs, store=self.store)
        self.library = CharacterLibrary(characters_dir)  # None: $HARUHI_CHARACTERS; starters and downloads always
        self.services = Services(self.store, self.models, self.library, self.report, sampling=sampling,
                                 save_interval=save_interval, store_problem=store_problem)

    def report(self, message: str, timeout: float = 10) -> None:
        """Show an error as a notification (the app keeps running) and keep it in :attr:`problems`."""
        self.problems.append(message)
        self.notify(message, severity="error", timeout=timeout)

    def _handle_exception(self, error: Exception) -> None:
        """Textual's hook (Textual 8) for every exception it did not expect. A failed background task (a
        worker) becomes a message and the app goes on; anything else ends the app as Textual does, but the
        traceback goes to the log and the terminal gets one line (:attr:`crash_message`)."""
        if isinstance(error, WorkerFailed):
            self._report_unexpected(error.error, "a background task failed")  # type: ignore[arg-type]
            return
        log = crash.record(error, "haruhi-tui stopped")
        self.crash_message = (f"haruhi-tui stopped after an unexpected error ({crash.summary(error)}); "
                              f"{crash.where(log)}")
        super()._handle_exception(error)
        self._exit_renderables.clear()  # the traceback is in the log, not dumped on the terminal

    def _report_unexpected(self, error: Exception, what: str) -> None:
        log = crash.record(error, what)
        self.report(f"{what}: unexpected error ({crash.summary(error)}); {crash.where(log)}", timeout=20)

    # -- startup ---------------------------------------------------------------------------------
    def get_default_screen(self) -> Screen:
        return ChatScreen(self.services)

    @property
    def chat_screen(self) -> ChatScreen:
        return self.screen_stack[0]  # type: ignore[return-value]  # the default screen is always at the bottom

    def on_ready(self) -> None:
        """The chat screen is up: report what went wrong so far, then start the slow loading."""
        if self.services.store_problem:
            self.report(self.services.store_problem, timeout=15)
        self.load_characters()
        if self.models.engine is None:
            self.load_model(self.models.first_choice(self.model_arg))

    @work(thread=True, group="characters")
    def load_characters(self) -> None:
        self.library.load()
        self.call_from_thread(self._characters_loaded)

    def _characters_loaded(self) -> None:
        if self.library.problem:
            self.report(self.library.problem, timeout=15)
        self.chat_screen.post_message(CharactersLoaded(self.start_character))

    # -- the model -------------------------------------------------------------------------------
    def action_pick_model(self) -> None:
        def picked(choice: str | None) -> None:
            if choice:
                self.load_model(choice)

        self.push_screen(ModelPicker(self.models.local_models(), current=self.models.label()), picked)

    @on(LoadModel)
    def _load_model_asked(self, event: LoadModel) -> None:
        self.load_model(event.choice)

    @work(thread=True, exclusive=True, group="model")
    def load_model(self, choice: str) -> None:
        """Load a GGUF (or assemble and load the bundled one) without freezing the UI."""
        screen = self.chat_screen
        self.models.begin()
        screen.post_message(ModelLoading(f"loading {choice_name(choice)}…"))
        try:
            engine = self.models.open(choice, lambda part, what: screen.post_message(ModelLoading(what + "…", part)))
        except HaruhiError as exc:
            self.call_from_thread(self._model_failed, str(exc))
            return
        self.call_from_thread(self._model_loaded, engine, choice)

    def _model_loaded(self, engine: Engine, choice: str) -> None:
        self.models.loaded(engine, choice)
        self.chat_screen.post_message(ModelReady(engine))

    def _model_failed(self, error: str) -> None:
        self.models.failed(error)
        self.chat_screen.post_message(ModelFailed(error))
        self.report(error, timeout=15)

    def action_pick_compare_model(self) -> None:
        def picked(choice: str | None) -> None:
            if choice:
                self.load_compare_model(choice)

        other = self.models.compare_engine
        current = (other.name if other is not None
                   else f"none yet: ctrl+k compares {self.models.label()} at two temperatures")
        self.push_screen(ModelPicker(self.models.local_models(), heading="Compare with model", current=current), picked)

    @work(thread=True, exclusive=True, group="compare-model")
    def load_compare_model(self, choice: str) -> None:
        try:
            engine = self.models.open(choice)
        except HaruhiError as exc:
            self.call_from_thread(self.report, str(exc))
            return

        def loaded() -> None:
            self.models.compare_engine = engine
            self.notify(f"ctrl+k compares {self.models.label()} with {engine.name}")

        self.call_from_thread(loaded)

    # -- commands --------------------------------------------------------------------------------
    def action_jobs(self) -> None:
        from .screens.jobs import JobsScreen

        if not isinstance(self.screen, JobsScreen):
            self.push_screen(JobsScreen(Launcher(self.store), self.library))

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.get_system_commands(self.chat_screen)))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        chat = self.chat_screen
        yield SystemCommand("New chat", "Pick a character to talk to (ctrl+n)", chat.action_new_chat)
        yield SystemCommand("New group chat", "Two or more characters in one scene (ctrl+g: who speaks next)",
                            chat.action_new_group_chat)
        yield SystemCommand("Pick model", "Bundled Gemma, a local GGUF, or a path (ctrl+o)", self.action_pick_model)
        yield SystemCommand("Regenerate reply", "A new reply to your last message (ctrl+r)", chat.action_regenerate)
        yield SystemCommand("Stop reply", "Stop the reply being generated (Esc)", chat.action_stop)
        yield SystemCommand("Toggle thinking", "Show or hide gpt-oss analysis (ctrl+t)", chat.action_toggle_thinking)
        yield SystemCommand("Context view", "Exactly what the model was sent (F2)", chat.action_context)
        yield SystemCommand("Toggle chat list", "Show or hide saved chats (ctrl+b)", chat.action_toggle_sidebar)
        yield SystemCommand("Rename chat", "Rename the current chat", chat.rename_chat)
        yield SystemCommand("Delete chat", "Delete the current chat", chat.delete_chat)
        yield SystemCommand("Your name", "Your name in this chat (Persona: a name and a description)",
                            self.ask_user_name)
        yield from roleplay_commands(self)
        yield SystemCommand("Chat settings", "Temperature, reply length, your name, reasoning effort (F9)",
                            chat.action_settings)
        yield SystemCommand("Continue reply", "The last reply goes on where it ended (F7)", chat.action_continue_reply)
        yield SystemCommand("Write my line", "The model writes your next line for you to edit (F8, impersonate)",
                            chat.action_impersonate)
        yield SystemCommand("Delete message", "The selected message (or the last) and all after it (ctrl+delete)",
                            chat.action_delete_message)
        yield SystemCommand("Export chat", "Write the chat as Markdown, JSONL, ShareGPT JSON or a SillyTavern chat",
                            self.export_chat)
        yield SystemCommand("Import character card",
                            "A Character Card V2/V3 .json/.png/.charx becomes a character (F5 in the character picker)",
                            self.action_import_card)
        yield SystemCommand("Export character card", "The current character as a card: .png, .json or .charx",
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
                self.chat_screen.update_title()  # "you: …"
                self.notify(f"you are {session.settings.user_name} in this chat")

        self.push_screen(TextDialog("Your name in this chat", session.settings.user_name,
                                    note=f"{session.character.name} talks to this name"), done)

    def set_reasoning_effort(self, effort: str) -> None:
        session = self.chat_screen.session
        if session is None:
            self.notify("no chat yet", severity="warning")
            return
        session.set_reasoning_effort(effort)
        engine = self.models.engine
        ignored = ("" if engine is None or engine.style == "harmony"
                   else f" (only gpt-oss reasons: {engine.name} ignores it)")
        self.notify(f"reasoning effort {effort} for {session.character.name}{ignored}")

    # -- files in and out: chat exports, character cards -----------------------------------------
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
        return self._write_reported(lambda: export_session(session, path), path, "exported")

    def _write_reported(self, write: Callable[[], Path], path: Path, done: str) -> Path | None:
        """Run a file export; a failure becomes a message in the app (the app keeps running)."""
        try:
            written = write()
        except HaruhiError as exc:
            self.report(str(exc))
            return None
        except OSError as exc:
            self.report(f"cannot write {path}: {exc.strerror or exc}; choose another path")
            return None
        except Exception as exc:  # what the character's files hold was not foreseen: a message, not a crash
            self._report_unexpected(exc, f"cannot write {path.name}")
            return None
        self.notify(f"{done}: {written}", timeout=10)
        return written

    def action_import_card(self) -> None:
        from .screens.cards import PathDialog

        def chosen(path: str | None) -> None:
            if path:
                self.import_card(Path(path))

        self.push_screen(PathDialog("Import character card",
                                    placeholder="path to a Character Card V2/V3 .json/.png/.charx",
                                    note=f"becomes a character folder in {self.library.imported_dir}"), chosen)

    def import_card(self, path: Path) -> Character | None:
        """Import a card into the app's characters folder; a bad card is a notification, nothing else."""
        try:
            character = self.library.import_card(path)
        except HaruhiError as exc:
            self.report(str(exc))
            return None
        except Exception as exc:  # a card shaped in a way nobody foresaw: a message, not a crash
            self._report_unexpected(exc, f"cannot import {path.name}")
            return None
        for screen in self.screen_stack:
            if isinstance(screen, CharacterPicker):
                screen.post_message(CharactersChanged())
        self.notify(f"imported {character.name} ({character.folder}): ctrl+n to talk to them")
        if character.warnings:  # what the card had that could not be used
            self.notify("\n".join(character.warnings), title="card imported with warnings", severity="warning",
                        timeout=15)
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
                self._write_reported(lambda: self.library.export_card(character, Path(path)), Path(path),
                                     "card written")

        default = data_dir() / "exports" / f"{character.folder}.png"
        self.push_screen(PathDialog(f"Export {character.name} as a character card", str(default),
                                    note=".png (card inside the image), .json or .charx (V3 zip)"), chosen)

    # -- downloads -------------------------------------------------------------------------------
    def action_download_model(self) -> None:
        from .screens.download import DownloadDialog

        def done(path: str | None) -> None:
            if path:
                self.notify(f"downloaded {path}: ctrl+o picks it", timeout=15)

        self.push_screen(DownloadDialog(self.report), done)

    async def action_quit(self) -> None:
        chat = self.chat_screen
        await chat.stop_and_wait()
        if chat.session is not None:
            chat.forget_if_unused(chat.session)
        self.exit()
