"""``haruhi chat``: talk to a character from the shell, on the app's own :class:`ChatSession` and sessions database.

With MESSAGE: one reply, streamed to stdout. Without: one reply per line read from stdin (a pipe, or a prompt
on a terminal). By default the latest chat with the character goes on (a chat started here continues in
``haruhi-tui`` and the other way round); ``--new`` starts another, ``--no-save`` keeps the run in memory.
``--show-prompt`` prints exactly what the model would be sent, without generating.

Ctrl-C during a reply stops it between two tokens; the partial reply is saved as ``stopped``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional, TextIO

import typer
from rich.console import Console
from rich.table import Table

from haruhi_tui.core.characters import Character
from haruhi_tui.core.errors import Cancelled, HaruhiError, friendly_errors
from haruhi_tui.services.character_library import CharacterLibrary
from haruhi_tui.services.chat import ChatSession, ContextSnapshot
from haruhi_tui.store import MEMORY, Chat, Store, StoreError, default_db_path

err = Console(stderr=True, highlight=False)


# -- characters ------------------------------------------------------------------------------------

def find_characters(characters_dir: Path | None = None) -> list[Character]:
    """The characters the app lists (:class:`CharacterLibrary`): ``haruhi chat`` finds characters only here."""
    library = CharacterLibrary(characters_dir)
    library.load()
    if not library.characters:
        raise HaruhiError(library.problem or "no characters found; pass --characters DIR or set $HARUHI_CHARACTERS")
    return library.listing()


def pick_character(name: str, characters: list[Character]) -> Character:
    """The character whose folder or speaking name is ``name`` (any case); else a one-line error with the
    closest names."""
    wanted = name.strip().casefold()
    for c in characters:
        if wanted in (c.folder.casefold(), c.name.casefold()):
            return c
    labels = {c.folder.casefold(): c for c in characters} | {c.name.casefold(): c for c in characters}
    close = difflib.get_close_matches(wanted, list(labels), n=3, cutoff=0.5)
    suggestions = list({labels[k].folder: labels[k] for k in close}.values()) or characters[:5]
    shown = [f"{c.folder} ({c.name})" if c.name != c.folder else c.folder for c in suggestions]
    if close:
        raise HaruhiError(f"no character {name!r}: did you mean {' or '.join(shown)}? (--character takes a folder "
                          "or speaking name)")
    raise HaruhiError(f"no character {name!r} in the characters folder; some there: {', '.join(shown)} "
                      "(--character takes a folder or speaking name)")


# -- the model -------------------------------------------------------------------------------------

def resolve_model(choice: str | None, store: Store | None, chat: Chat | None = None) -> Path:
    """The GGUF to chat on: ``--model`` (a file, a downloaded catalogue id, or ``bundled``); else the model the
    chat was last held on, else the app's last model (while their files are there); else the bundled Gemma 3
    270M (assembled on first use)."""
    from haruhi_tui.services.bundled_model import default_gguf
    from haruhi_tui.services.model_catalogue import find_entry

    if choice is None:
        last = ""
        if store is not None:
            with contextlib.suppress(StoreError):
                last = store.pref("last_model") or ""
        for earlier in (chat.model if chat is not None else "", last):
            if isinstance(earlier, str) and earlier and Path(earlier).expanduser().is_file():
                return Path(earlier).expanduser()
    if choice is None or choice == "bundled":
        return default_gguf(_progress_line)
    path = Path(choice).expanduser()
    if path.is_file():
        return path
    entry = find_entry(choice)
    if entry is not None:
        if entry.downloaded():
            return entry.local_path()
        raise HaruhiError(f"{entry.id} is not downloaded yet: run `haruhi models get {entry.id}` "
                          f"({entry.size_label}), then try again")
    raise HaruhiError(f"model not found: {choice} (pass a .gguf file, an id from `haruhi models list`, or leave "
                      "--model out for the bundled model)")


def _progress_line(fraction: float | None, message: str) -> None:
    if sys.stderr.isatty():
        done = f" {fraction:.0%}" if fraction is not None else ""
        sys.stderr.write(f"\r{message}{done}\033[K")
        sys.stderr.flush()


# -- the chat --------------------------------------------------------------------------------------

def latest_chat(store: Store, character: Character | None) -> Chat | None:
    """The most recently used chat with ``character`` (any character when None)."""
    for chat in store.chats(limit=100_000):
        if character is None or chat.character == character.folder:
            return chat
    return None


def copy_to_memory(store: Store, chat: Chat) -> tuple[Store, Chat]:
    """The chat's current branch, pins, summary and sticky scenes in a new in-memory store (``--no-save``,
    ``--show-prompt``: the prompt is the one the saved chat would get, and nothing is written)."""
    memory = Store(MEMORY)
    copy = memory.create_chat(chat.character, chat.character_name, title=chat.title, model=chat.model,
                              settings=chat.settings)
    memory.update_chat(copy.id, scene_ids=chat.scene_ids)
    ids: dict[int, int] = {}
    for m in store.branch(chat.id):
        ids[m.id] = memory.add_message(copy.id, ids.get(m.parent_id) if m.parent_id else None, m.role, m.content,
                                       analysis=m.analysis, status=m.status, model=m.model, stats=m.stats).id
    for pin in store.pins(chat.id):
        memory.add_pin(copy.id, pin.text)
    if chat.summary:
        memory.set_summary(copy.id, chat.summary, ids.get(chat.summary_upto) if chat.summary_upto else None)
    return memory, memory.chat(copy.id)


def apply_persona(session: ChatSession, persona: str | None) -> None:
    """Who the user plays (``--persona``): a stored persona of that name brings its description, any other name
    is just the name; stored with the chat."""
    if persona is None:
        return
    if not persona.strip():
        raise HaruhiError("--persona needs a name (who you play in the chat)")
    session.set_persona(persona)


@contextlib.contextmanager
def ctrl_c_stops(cancel: threading.Event) -> Iterator[None]:
    """Ctrl-C sets ``cancel`` (the reply stops after the token in flight and is saved as stopped); a second
    Ctrl-C before it has stopped interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stream_reply(session: ChatSession, engine, sampling, out: TextIO, *, thinking: bool) -> bool:
    """Generate the reply to the last user message, printing the character's words as they come; analysis
    (gpt-oss thinking) goes to stderr with ``thinking``. False if Ctrl-C stopped it."""
    cancel = threading.Event()
    started = False

    def on_delta(_message, delta) -> None:
        nonlocal started
        if delta.channel == "final":
            text = delta.text if started else delta.text.lstrip()
            if text:
                started = True
                out.write(text)
                out.flush()
        elif thinking:
            sys.stderr.write(delta.text)
            sys.stderr.flush()

    with ctrl_c_stops(cancel):
        reply = session.reply(engine, on_delta=on_delta, cancel=cancel, sampling=sampling)
    out.write("\n")
    out.flush()
    return reply.status != "stopped"


def show_prompt(ctx: ContextSnapshot, out: TextIO) -> None:
    """The blocks with their token counts (stderr) and the exact text the model would be sent (stdout)."""
    summary = f"{ctx.model} · {ctx.style} · {ctx.prompt_tokens} prompt tokens"
    if ctx.prompt.dropped_turns:
        summary += f" · {ctx.prompt.dropped_turns} older turn(s) left out"
    err.print(summary)
    table = Table()
    table.add_column("block")
    table.add_column("tokens", justify="right")
    table.add_column("cut")
    for block in ctx.prompt.blocks:
        table.add_row(block.title, str(block.tokens), block.cut or "—")
    err.print(table)
    err.print(f"[dim]rendered prompt ({ctx.style}) on stdout:[/]")
    out.write(ctx.text)
    if not ctx.text.endswith("\n"):
        out.write("\n")
    out.flush()


def _lines(prompt: str) -> Iterator[str]:
    """What the user says, one line at a time: a prompt on a terminal, plain lines from a pipe."""
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    while True:
        try:
            line = input(prompt) if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and not line:
            return
        if line.strip():
            yield line.strip()


@friendly_errors
def chat_command(
    message: Optional[str] = typer.Argument(None, metavar="MESSAGE",
                                            help="Say this, print the reply and exit. Without it: one reply per "
                                                 "line of stdin (a pipe, or a prompt on a terminal)."),
    character: Optional[str] = typer.Option(None, "--character", metavar="NAME",
                                            help="Folder or speaking name (haruhi, 春日, Hermione). Default: the "
                                                 "character of your latest chat."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="GGUF",
                                        help="A .gguf file, a downloaded catalogue id, or 'bundled'. Default: the "
                                             "chat's model, else the app's last one, else the bundled Gemma 3 270M."),
    persona: Optional[str] = typer.Option(None, "--persona", metavar="NAME",
                                          help="Who you play (your name in the chat; default: the character's "
                                               "usual partner). Kept with the chat."),
    new: bool = typer.Option(False, "--new", help="Start a new chat instead of continuing the latest one."),
    show: bool = typer.Option(False, "--show-prompt", help="Print the exact prompt (stdout) and its blocks "
                                                           "with token counts (stderr); generate nothing."),
    no_save: bool = typer.Option(False, "--no-save", help="Keep this run in memory: nothing is written to the "
                                                          "sessions database."),
    thinking: bool = typer.Option(False, "--thinking", help="Show gpt-oss's thinking (analysis) on stderr."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="For this run (0: greedy). Default: "
                                                "the chat's setting."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Longest reply, for this run."),
    characters_dir: Optional[Path] = typer.Option(None, "--characters", metavar="DIR",
                                                  help="Characters folder (default: $HARUHI_CHARACTERS or the "
                                                       "app's)."),
    db: Optional[Path] = typer.Option(None, "--db", metavar="FILE",
                                      help="Sessions database (default: <data dir>/sessions.db, the app's)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", metavar="TOKENS",
                                        help="Context length for the model (default: the app's)."),
) -> None:
    """Chat with a character in the shell, on the same chats as haruhi-tui.

    The character's latest chat goes on (here or in haruhi-tui); --new starts another.

    Ctrl-C stops a reply; it is kept, marked stopped.
    """
    from haruhi_tui.core.engine import DEFAULT_N_CTX, open_gguf

    if message is not None and not message.strip():
        raise HaruhiError("MESSAGE is empty: say something, or leave it out to chat line by line")
    n_ctx = n_ctx or DEFAULT_N_CTX
    if n_ctx < 256:
        raise HaruhiError("--n-ctx must be at least 256 tokens")
    if max_tokens is not None and max_tokens < 1:
        raise HaruhiError("--max-tokens must be at least 1")
    characters = find_characters(characters_dir)
    wanted = pick_character(character, characters) if character else None
    saving = not (no_save or show)
    store, chat, wanted = _open_chat(db or default_db_path(), characters, wanted, new=new, saving=saving)
    path = resolve_model(model, store, chat)
    engine = open_gguf(path, n_ctx=n_ctx)
    _progress_line(None, "")  # clears the assembling line, if any
    if not saving:
        store, chat = copy_to_memory(store, chat) if chat is not None and store is not None else (Store(MEMORY), None)
    assert store is not None
    session = (ChatSession.resume(store, chat.id, {wanted.folder: wanted}, on_error=_warn) if chat is not None
               else ChatSession.start(store, wanted, model=str(path), on_error=_warn))
    try:
        _talk(session, engine, message, persona=persona, show=show, thinking=thinking, temperature=temperature,
              max_tokens=max_tokens)
    finally:
        if chat is None and saving and not session.messages:  # nothing was said: leave no empty chat behind
            with contextlib.suppress(StoreError):
                store.delete_chat(session.chat.id)


def _open_chat(db_path: Path, characters: list[Character], wanted: Character | None, *, new: bool,
               saving: bool) -> tuple[Store | None, Chat | None, Character]:
    """The sessions database (None: a run that saves nothing and finds none), the chat to continue (None: a
    new one) and its character."""
    store: Store | None = None
    try:
        if saving or db_path.exists():  # a run that saves nothing creates no database either
            store = Store(db_path)
    except StoreError as exc:
        if saving:
            raise HaruhiError(f"{exc} (or pass --no-save)") from None
    chat = None if new or store is None else latest_chat(store, wanted)
    if chat is not None and wanted is None:
        wanted = next((c for c in characters if c.folder == chat.character), None)
        if wanted is None:
            raise HaruhiError(f"your latest chat is with {chat.character_name or chat.character}, who is not in "
                              "the characters folder: pass --character NAME (or --characters DIR)")
    if wanted is None:
        raise HaruhiError("no chat to continue: pass --character NAME, e.g. "
                          + ", ".join(c.folder for c in characters[:4]))
    return store, chat, wanted


def _talk(session: ChatSession, engine, message: str | None, *, persona: str | None, show: bool, thinking: bool,
          temperature: float | None, max_tokens: int | None) -> None:
    """Show the prompt, answer MESSAGE, or answer each line of stdin."""
    apply_persona(session, persona)
    sampling = session.settings.sampling()
    if temperature is not None:
        sampling = dataclasses.replace(sampling, temperature=temperature)
    if max_tokens is not None:
        sampling = dataclasses.replace(sampling, max_tokens=max_tokens)

    if show:
        if message is not None:
            session.add_user_message(message)
        show_prompt(session.build_context(engine), sys.stdout)
        return
    if message is not None:
        session.add_user_message(message)
        if not stream_reply(session, engine, sampling, sys.stdout, thinking=thinking):
            raise Cancelled("stopped (Ctrl-C); the partial reply is kept, marked stopped")
        return
    on_terminal = sys.stdin.isatty() and sys.stdout.isatty()
    if on_terminal:
        err.print(f"[dim]{session.character.name} · {engine.name} · you are {session.settings.user_name}. "
                  "Ctrl-C stops a reply, Ctrl-D ends.[/]")
    for line in _lines(f"{session.settings.user_name}> " if on_terminal else ""):
        session.add_user_message(line)
        if on_terminal:
            sys.stdout.write(f"{session.character.name}: ")
        if not stream_reply(session, engine, sampling, sys.stdout, thinking=thinking):
            if not on_terminal:
                raise Cancelled("stopped (Ctrl-C); the partial reply is kept, marked stopped")
            err.print("[dim](stopped; kept, marked stopped)[/]")


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}")


def register(app: typer.Typer) -> None:
    """Attach ``chat`` to the ``haruhi`` app."""
    app.command("chat")(chat_command)
