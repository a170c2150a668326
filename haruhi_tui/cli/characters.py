"""The ``haruhi characters`` commands: the character library (bundled starters, characters downloaded from
the ChatHaruhi hub datasets, imported character cards, the configured folder) listed, grown and pruned."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from haruhi_tui.core.cli_style import cli_app
from haruhi_tui.core.errors import HaruhiError, friendly_errors
from haruhi_tui.core.paths import bundled_notice

characters_app = cli_app(
    help="The character library: the bundled starters, characters downloaded from the ChatHaruhi hub datasets, "
         "imported character cards and your own folder ($HARUHI_CHARACTERS).",
    no_args_is_help=True,
)
console = Console(stderr=True)
CHARACTERS_OPTION = typer.Option(None, "--characters", "-c", metavar="DIR",
                                 help="Your own folder of ChatHaruhi character folders (default: $HARUHI_CHARACTERS).")


def _library(characters: Path | None):
    from haruhi_tui.services.character_library import CharacterLibrary

    return CharacterLibrary(characters)


@characters_app.command("list")
@friendly_errors
def list_command(
    hub: bool = typer.Option(False, "--hub", help="List the characters `get` can download instead (no network "
                             "needed), marked if you have them."),
    characters: Optional[Path] = CHARACTERS_OPTION,
) -> None:
    """Who you can talk to: name, work, where they are from (origin), source and licence."""
    library = _library(characters)
    out = Console()
    if hub:
        _list_hub(library, out)
        return
    table = _table(f"{len(library)} characters", "name", "work", "origin", "source", "licence")
    for entry in library.entries():
        table.add_row(entry.display_name, entry.work or "[dim]?[/]", entry.origin, entry.source.kind, entry.licence)
    out.print(table)
    for hidden, by in library.shadowed:
        console.print(f"[yellow]note:[/] {hidden.key} ({hidden.origin}, {hidden.folder.parent}) is hidden by the "
                      f"{by.origin} one of the same folder name")
    for problem in library.problems:
        console.print(f"[yellow]warning:[/] {problem}")
    out.print("Starter data: ChatHaruhi (github.com/LC1332/Chat-Haruhi-Suzumiya), CC BY-NC 4.0; attribution in "
              f"{bundled_notice()}. `haruhi characters list --hub` shows who else `haruhi characters get NAME` "
              "can fetch.")


def _table(title: str, *columns: str) -> Table:
    """A borderless table that reads at 80 columns: the second column (the work) wraps, the others do not."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, column in enumerate(columns):
        if i == 0:
            table.add_column(column, no_wrap=True, max_width=22, overflow="ellipsis")
        elif i == 1:
            table.add_column(column, ratio=1, overflow="fold")
        else:
            table.add_column(column, no_wrap=True)
    return table


def _list_hub(library, out: Console) -> None:
    from haruhi_tui.services.character_hub import catalogue

    have = {e.key.casefold(): e.origin for e in library.entries()}
    table = _table("on the ChatHaruhi hub datasets", "name", "work", "set", "licence", "have")
    for c in catalogue():
        table.add_row(c.display_name, c.work, c.collection, c.source().licence, have.get(c.folder.casefold(), ""))
    out.print(table)
    out.print("`haruhi characters get NAME…` (or --all) downloads them; ChatHaruhi's are CC BY-NC 4.0, RoleLLM's "
              "CC BY 4.0 (see NOTICE).")


@characters_app.command("get")
@friendly_errors
def get_command(
    names: Optional[list[str]] = typer.Argument(None, metavar="NAME…",
                                                help="Characters to download: folder, name or display name "
                                                     "(`list --hub` shows them), e.g. Luna 'Jack Sparrow'."),
    all_: bool = typer.Option(False, "--all", help="Every character of both hub datasets (127)."),
    characters: Optional[Path] = CHARACTERS_OPTION,
) -> None:
    """Download characters from the ChatHaruhi hub datasets into <data dir>/characters, resumable.

    Each becomes a character folder with a character.json naming its source and licence. Characters you have
    are skipped without asking the hub, so running it again is a no-op; an interrupted download continues.
    Set HF_ENDPOINT for a mirror.
    """
    from haruhi_tui.services.character_hub import catalogue, get_characters, resolve

    from .models import _progress_bar

    if bool(names) == all_:
        raise HaruhiError("name the characters to get (e.g. `haruhi characters get Luna`), or pass --all")
    wanted = catalogue() if all_ else resolve(names or [])
    library = _library(characters)
    with _progress_bar() as progress:
        result = get_characters(wanted, library, progress=progress)
    out = Console()
    if result.fetched:
        shown = ", ".join(f"{c.display_name} ({c.folder})" for c in result.fetched)
        out.print(f"added {len(result.fetched)}: {shown} → {library.user_dir}")
    for c, reason in result.present:
        if not all_:
            out.print(f"{c.display_name} ({c.folder}): {reason}")
    if all_ and result.present:
        out.print(f"{len(result.present)} already in the library")
    if result.missing:
        names = [c.stem for c in result.missing]
        missing = ", ".join(names[:5]) + (f"… ({len(names)} in all)" if len(names) > 5 else "")
        if not all_:
            raise HaruhiError(f"not on the hub (any more): {missing}")
        console.print(f"[yellow]warning:[/] not on the hub (any more): {missing}")
    if not result.fetched and not result.missing:
        out.print("nothing to download: you have them all")


@characters_app.command("import")
@friendly_errors
def import_command(
    file: Path = typer.Argument(..., metavar="FILE",
                                help="A Character Card V2/V3 .json, or a .png with the card inside."),
    characters: Optional[Path] = CHARACTERS_OPTION,
) -> None:
    """Turn a character card into a character folder in <data dir>/characters."""
    library = _library(characters)
    character = library.import_card(file)
    Console().print(f"imported {character.name} as {character.folder} into {library.user_dir}")


@characters_app.command("export")
@friendly_errors
def export_command(
    name: str = typer.Argument(..., help="The character: folder, name or display name."),
    file: Path = typer.Argument(..., metavar="FILE", help="Where to write the card: .png (card inside the image) "
                                "or .json."),
    characters: Optional[Path] = CHARACTERS_OPTION,
) -> None:
    """Write a character as a Character Card V2 other apps import."""
    library = _library(characters)
    print(library.export_card(library.entry(name).load(), file))


@characters_app.command("remove")
@friendly_errors
def remove_command(
    name: str = typer.Argument(..., help="A downloaded or imported character: folder, name or display name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask first."),
    characters: Optional[Path] = CHARACTERS_OPTION,
) -> None:
    """Delete a downloaded or imported character (bundled ones and your own folder are never touched)."""
    library = _library(characters)
    entry = library.entry(name)
    if entry.removable and not yes:
        typer.confirm(f"remove {entry.display_name} ({entry.key}) and its folder {entry.folder}?", abort=True)
    removed = library.remove(name)
    Console().print(f"removed {removed.display_name} ({removed.key})")
    back = next((e for e in library.entries() if e.key == removed.key), None)
    if back is not None:  # it had hidden another of the same folder name
        Console().print(f"the {back.origin} {back.key} is listed again")


def register(app: typer.Typer) -> None:
    """Attach ``characters`` to the ``haruhi`` app."""
    app.add_typer(characters_app, name="characters")
