"""The command palette's role-play entries: persona, world info, author's note, and importing a SillyTavern chat.

Each opens its own screen (:mod:`.screens.persona`, :mod:`.screens.world_info`, :mod:`.screens.authors_note`)
on the chat that is open; what they change is stored with the chat by the session
(:mod:`haruhi_tui.services.roleplay`) and used from the next prompt on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Protocol

from textual.app import SystemCommand

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.roleplay import AuthorsNote
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.services.st_chat import import_st_chat
from haruhi_tui.store import Chat, StoreError

from .screens.chat import ChatScreen
from .services import Services


class HaruhiApp(Protocol):
    """What these commands use of the app (:class:`~.app.HaruhiApp`, which imports this module)."""

    services: Services

    @property
    def chat_screen(self) -> ChatScreen: ...
    def push_screen(self, screen: Any, callback: Any = None) -> Any: ...
    def notify(self, message: str, **kwargs: Any) -> None: ...
    def run_worker(self, work: Any, **kwargs: Any) -> Any: ...
    def call_from_thread(self, callback: Any, *args: Any) -> Any: ...


def roleplay_commands(app: HaruhiApp) -> Iterator[SystemCommand]:
    yield SystemCommand("Persona", "Who you play in this chat: a stored persona (name and description) or the "
                        "character's default", lambda: open_persona(app))
    yield SystemCommand("World info", "Lorebooks of this chat and of the character; which entries fired and why",
                        lambda: open_world_info(app))
    yield SystemCommand("Author's note", "Text placed a few messages from the end of every prompt, and its depth",
                        lambda: open_authors_note(app))
    yield SystemCommand("Import SillyTavern chat", "A SillyTavern .jsonl chat becomes a chat here (swipes become "
                        "versions)", lambda: ask_st_chat(app))


def _session(app: HaruhiApp, *, idle: bool = False) -> ChatSession | None:
    screen = app.chat_screen
    if screen.session is None:
        app.notify("no chat yet: ctrl+n picks a character", severity="warning")
        return None
    if idle and screen.generating:
        app.notify("a reply is still coming: Esc stops it first (nothing is lost)", severity="warning")
        return None
    return screen.session


def open_persona(app: HaruhiApp) -> None:
    from .screens.persona import PersonaScreen

    session = _session(app, idle=True)
    if session is None:
        return

    async def done(changed: bool | None) -> None:
        screen = app.chat_screen
        if changed and screen.session is session and not screen.generating:
            await screen.show_session(session)  # every line of yours carries the name, as the prompt does
        screen.update_title()

    app.push_screen(PersonaScreen(session, app.services.report), done)


def open_world_info(app: HaruhiApp) -> None:
    from .screens.world_info import WorldInfoScreen

    session = _session(app)
    if session is not None:
        app.push_screen(WorldInfoScreen(session, app.services.report))


def open_authors_note(app: HaruhiApp) -> None:
    from .screens.authors_note import AuthorsNoteDialog

    session = _session(app)
    if session is None:
        return

    def done(note: AuthorsNote | None) -> None:
        if note is None:
            return
        try:
            saved = session.set_authors_note(note.text, note.depth)
        except (StoreError, ValueError) as exc:
            app.services.report(str(exc))
            return
        app.notify(f"author's note at depth {saved.depth}" if saved.text else "no author's note", timeout=3)

    app.push_screen(AuthorsNoteDialog(session.authors_note, session.character.name), done)


def ask_st_chat(app: HaruhiApp) -> None:
    from .screens.cards import PathDialog

    if app.chat_screen.generating:
        app.notify("a reply is still coming: Esc stops it first (nothing is lost)", severity="warning")
    else:
        app.push_screen(PathDialog("Import SillyTavern chat", placeholder="path to a SillyTavern chat .jsonl",
                                   note="for a character you have (import their card first); the chat opens here"),
                        lambda path: import_st_file(app, Path(path)) if path else None)


def import_st_file(app: HaruhiApp, path: Path) -> None:
    """Import in a thread (a long chat is many writes), then open the chat."""

    def work() -> None:
        try:
            chat = import_st_chat(app.services.store, path, app.services.library.characters)
        except HaruhiError as exc:
            app.call_from_thread(app.services.report, str(exc))
            return
        app.call_from_thread(_opened, chat)

    async def _opened(chat: Chat) -> None:
        await app.chat_screen.resume_chat(chat.id)
        count = len(app.chat_screen.session.messages) if app.chat_screen.session else 0
        app.notify(f"imported {path.name}: {count} messages with {chat.character_name}", timeout=6)

    app.run_worker(work, thread=True, group="st-import")
