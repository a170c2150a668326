"""The ``haruhi personas`` commands: the stored personas (who you play: a name and a description) that the app's
Persona screen and ``haruhi chat --persona NAME`` use, in the sessions database."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from haruhi_tui.core.cli_style import cli_app
from haruhi_tui.core.errors import HaruhiError, friendly_errors
from haruhi_tui.store import Persona, Store, default_db_path

personas_app = cli_app(help="Who you play: stored personas for haruhi-tui and `haruhi chat --persona NAME`.",
                           no_args_is_help=True)
DB_HELP = "Sessions database (default: <data dir>/sessions.db, the app's)."


def _store(db: Path | None) -> Store:
    return Store(db or default_db_path())


def _named(store: Store, name: str) -> Persona:
    wanted = " ".join(name.split())
    match = [p for p in store.personas() if p.name == wanted]
    if not match:
        raise HaruhiError(f"no persona named {wanted!r}: `haruhi personas list` shows them")
    return match[0]


@personas_app.command("list")
@friendly_errors
def list_command(db: Optional[Path] = typer.Option(None, "--db", metavar="FILE", help=DB_HELP)) -> None:
    """Show the stored personas and their descriptions."""
    personas = _store(db).personas()
    if not personas:
        Console(stderr=True).print("no personas yet: `haruhi personas add NAME --description TEXT` adds one")
        return
    table = Table("name", "description")
    for p in personas:
        table.add_row(p.name, p.description or "—")
    Console().print(table)


@personas_app.command("add")
@friendly_errors
def add_command(
    name: str = typer.Argument(..., help="Your name in the chat ({{user}})."),
    description: str = typer.Option("", "--description", "-d", help="Who you are; goes into the system prompt."),
    db: Optional[Path] = typer.Option(None, "--db", metavar="FILE", help=DB_HELP),
) -> None:
    """Add a persona, or change the description of the one of that name."""
    store = _store(db)
    if not " ".join(name.split()):
        raise HaruhiError("a persona needs a name")
    try:
        persona = store.update_persona(_named(store, name).id, description=description)
        done = "updated"
    except HaruhiError:
        persona, done = store.add_persona(name, description), "added"
    Console(stderr=True).print(f"{done} persona {persona.name}")


@personas_app.command("remove")
@friendly_errors
def remove_command(
    name: str = typer.Argument(..., help="The persona's name."),
    db: Optional[Path] = typer.Option(None, "--db", metavar="FILE", help=DB_HELP),
) -> None:
    """Remove a persona; chats that used it keep its name, without its description."""
    store = _store(db)
    persona = _named(store, name)
    store.delete_persona(persona.id)
    Console(stderr=True).print(f"removed persona {persona.name}")


def register(app: typer.Typer) -> None:
    """Attach ``personas`` to the ``haruhi`` app."""
    app.add_typer(personas_app, name="personas")
