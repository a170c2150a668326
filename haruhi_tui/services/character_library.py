"""The character library: every character the app, ``haruhi data build`` and ``haruhi characters`` know.

Characters come from three folders, and a folder name found in more than one is taken from the first in
this order (the others are *shadowed*, listed in :attr:`CharacterLibrary.shadowed`):

1. **configured**: the folder given with ``--characters`` or ``$HARUHI_CHARACTERS``; the user pointed at it,
   so it wins;
2. **downloaded** and **imported**: ``<data dir>/characters``, where ``haruhi characters get`` converts hub
   characters and card imports write (one folder, so they never clash with each other; a folder whose
   ``character.json`` source is a hub dataset was downloaded, any other was imported);
3. **bundled**: the starter set shipped in the package, so a fresh install has someone to talk to.

Every entry carries its origin, its source and licence (from ``character.json``; a folder without one is a
plain ChatHaruhi folder of unknown licence). The library never writes outside ``<data dir>/characters``.

UI-free: the app reads it in a worker (:meth:`CharacterLibrary.load`, then :attr:`~CharacterLibrary.characters`),
``haruhi characters`` and ``haruhi data build`` use its entries without loading every scene.
"""

from __future__ import annotations

import difflib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from haruhi_tui.core.cards import export_card, import_card
from haruhi_tui.core.character_manifest import CharacterManifest, Source, read_manifest
from haruhi_tui.core.characters import Character, is_character_folder, load_character, load_selected
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.paths import bundled_characters_dir, configured_characters_dir, user_characters_dir

Origin = Literal["configured", "downloaded", "imported", "bundled"]
ORIGINS: tuple[Origin, ...] = ("configured", "downloaded", "imported", "bundled")
#: ``character.json`` source URLs of characters that ``haruhi characters get`` converted from the hub.
HUB_URL_PREFIX = "https://huggingface.co/datasets/"


@dataclass
class LibraryEntry:
    """One character folder of the library; :meth:`load` reads its scenes (once)."""

    folder: Path
    origin: Origin
    manifest: CharacterManifest = field(default_factory=CharacterManifest)
    _character: Character | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """The folder name: what chats, ``--only`` and ``--character`` refer to."""
        return self.folder.name

    def load(self) -> Character:
        if self._character is None:
            self._character = load_character(self.folder)
        return self._character

    @property
    def name(self) -> str:
        """The speaking name (``春日``)."""
        return self.manifest.name or self.load().name

    @property
    def display_name(self) -> str:
        """How lists show them (``凉宫春日``)."""
        return self.manifest.display_name or self.name

    @property
    def work(self) -> str:
        return self.manifest.work or self.load().source_work

    @property
    def source(self) -> Source:
        """character.json's source; without one: a card import (imported) or a local folder."""
        if self.manifest.source != Source():
            return self.manifest.source
        return Source(kind="card" if self.origin == "imported" else "local")

    @property
    def licence(self) -> str:
        return self.source.licence or "unknown"

    @property
    def removable(self) -> bool:
        """Only what haruhi-tui put into <data dir>/characters can be removed through it."""
        return self.origin in ("downloaded", "imported")

    def matches(self, name: str, *, load: bool = False) -> bool:
        """Is ``name`` (any case) this folder, speaking or display name? ``load``: read the scenes to learn a
        speaking name that character.json does not give."""
        names = {self.key, self.manifest.name, self.manifest.display_name}
        if self._character is not None or (load and not self.manifest.name):
            names.add(self.load().name)
        return name.casefold().strip() in {n.casefold() for n in names if n}


def _origin_in_user_dir(manifest: CharacterManifest) -> Origin:
    return "downloaded" if manifest.source.url.startswith(HUB_URL_PREFIX) else "imported"


class CharacterLibrary:
    """The characters of one configuration. ``configured=None`` reads ``$HARUHI_CHARACTERS``; ``user_dir``
    defaults to ``<data dir>/characters`` and ``bundled_dir`` to the package's starters.

    :meth:`scan` (done at construction) lists the folders; :meth:`load` reads every visible character into
    :attr:`characters` (by folder), :attr:`imported`/:attr:`downloaded` (folders of those origins) and
    :attr:`problem` (what could not be read, one line, or "").
    """

    def __init__(self, configured: str | Path | None = None, user_dir: str | Path | None = None, *,
                 bundled_dir: str | Path | None = None) -> None:
        self.configured_dir: Path | None = Path(configured).expanduser() if configured else configured_characters_dir()
        self.user_dir = Path(user_dir) if user_dir else user_characters_dir()
        self.bundled_dir = Path(bundled_dir) if bundled_dir else bundled_characters_dir()
        self.problems: list[str] = []
        self.shadowed: list[tuple[LibraryEntry, LibraryEntry]] = []  # (hidden entry, the one that hides it)
        self.characters: dict[str, Character] = {}
        self.imported: set[str] = set()
        self.downloaded: set[str] = set()
        self.problem = ""
        self._entries: list[LibraryEntry] = []
        self._loaded: dict[Path, Character] = {}
        self.scan()

    @property
    def imported_dir(self) -> Path:
        """Where card imports (and downloads) become character folders."""
        return self.user_dir

    @property
    def characters_dir(self) -> Path:
        """The configured folder, else the user's: where messages say a character was looked for."""
        return self.configured_dir or self.user_dir

    # -- reading ---------------------------------------------------------------------------------
    def _folders(self, root: Path | None, required: bool) -> list[Path]:
        if root is None:
            return []
        if not root.is_dir():
            if required:
                self.problems.append(f"characters folder not found: {root} (check --characters or "
                                     "$HARUHI_CHARACTERS)")
            return []
        try:
            folders = sorted(p for p in root.iterdir() if is_character_folder(p))
        except OSError as exc:
            self.problems.append(f"cannot read {root}: {exc.strerror or exc}")
            return []
        if required and not folders:
            self.problems.append(f"no character folders in {root}: each needs system_prompt.txt and texts/*.txt "
                                 "(check --characters or $HARUHI_CHARACTERS)")
        return folders

    def _entry(self, folder: Path, origin: Origin) -> LibraryEntry | None:
        try:
            manifest = read_manifest(folder)
        except HaruhiError as exc:
            self.problems.append(f"skipped {folder.name}: {exc}")
            return None
        if origin == "imported":
            origin = _origin_in_user_dir(manifest)
        entry = LibraryEntry(folder, origin, manifest)
        entry._character = self._loaded.get(folder)
        return entry

    def scan(self) -> None:
        """List the three folders again (after a download, import or removal); scenes are not read."""
        self.problems, self.shadowed = [], []
        sources: list[tuple[list[Path], Origin]] = [
            (self._folders(self.configured_dir, required=True), "configured"),
            (self._folders(self.user_dir, required=False), "imported"),
            (self._folders(self.bundled_dir, required=False), "bundled"),
        ]
        seen: dict[str, LibraryEntry] = {}
        for folders, origin in sources:
            for folder in folders:
                entry = self._entry(folder, origin)
                if entry is None:
                    continue
                first = seen.get(entry.key.casefold())
                if first is None:
                    seen[entry.key.casefold()] = entry
                elif first.folder.resolve() != entry.folder.resolve():  # the same folder twice is no clash
                    self.shadowed.append((entry, first))
        self._entries = sorted(seen.values(), key=lambda e: e.key.casefold())

    def entries(self, *origins: Origin) -> list[LibraryEntry]:
        """The visible entries (one per folder name), sorted by folder name; only ``origins`` if given."""
        return [e for e in self._entries if not origins or e.origin in origins]

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> LibraryEntry:
        """The entry with this folder, speaking or display name (any case); a one-line error naming close
        matches otherwise."""
        for load in (False, True):  # names at hand first; reading scenes only if none matches
            for entry in self._entries:
                if entry.matches(name, load=load):
                    return entry
        names = [n for e in self._entries for n in (e.key, e.manifest.display_name) if n]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise HaruhiError(f"no character {name!r} in the library{hint}: `haruhi characters list` shows who is there")

    def select(self, only: list[str] | None = None, speakers: dict[str, str] | None = None) -> list[Character]:
        """Load the characters (or just ``only``, matched on folder or speaking name), as
        :func:`haruhi_tui.core.characters.load_characters` does for one folder (``haruhi data build``)."""
        return load_selected([e.folder for e in self._entries], only, speakers, where="the character library")

    def read(self) -> tuple[list[Character], set[str], str]:
        """Read every visible character (slow: a thread's work): the characters, the imported ones' folders and
        the problem ("" if none); a folder that cannot be read is skipped and named in the problem."""
        self.scan()
        characters, problems = [], list(self.problems)
        for entry in self._entries:
            try:
                character = entry.load()
            except HaruhiError as exc:
                problems.append(f"skipped {entry.key}: {exc}")
                continue
            except OSError as exc:
                problems.append(f"skipped {entry.key}: {exc.strerror or exc}")
                continue
            self._loaded[entry.folder] = character
            characters.append(character)
        imported = {e.key for e in self._entries if e.origin == "imported" and e.folder in self._loaded}
        return characters, imported, "; ".join(problems)

    def load(self) -> None:
        """:meth:`read` into :attr:`characters`, :attr:`imported`, :attr:`downloaded` and :attr:`problem`."""
        characters, self.imported, self.problem = self.read()
        self.characters = {c.folder: c for c in characters}
        self.downloaded = {e.key for e in self._entries if e.origin == "downloaded" and e.key in self.characters}

    def listing(self) -> list[Character]:
        """Every loaded character, by folder name (the picker's order)."""
        return sorted(self.characters.values(), key=lambda c: c.folder.casefold())

    def find(self, name: str) -> Character | None:
        """The loaded character whose folder or speaking name is ``name`` (any case)."""
        wanted = name.casefold()
        return next((c for c in self.characters.values() if wanted in (c.folder.casefold(), c.name.casefold())), None)

    def origin_of(self, folder_name: str) -> Origin | None:
        return next((e.origin for e in self._entries if e.key == folder_name), None)

    def describe(self) -> str:
        """Where the characters come from, for messages."""
        parts = ["the bundled starters", str(self.user_dir)]
        if self.configured_dir is not None:
            parts.insert(0, str(self.configured_dir))
        return ", ".join(parts)

    # -- changing <data dir>/characters ------------------------------------------------------------
    def import_card(self, path: str | Path) -> Character:
        """A Character Card (.json/.png) becomes a folder in <data dir>/characters. A folder name that another
        library character has gets a ``_card`` suffix (``haruhi_card``, ``haruhi_card2``…), so nothing is
        shadowed. A bad card or an unwritable folder is a HaruhiError "cannot import <file>: why"."""
        name = Path(path).name
        try:
            self.user_dir.mkdir(parents=True, exist_ok=True)
            character = import_card(path, self.user_dir)
            folder = self.user_dir / character.folder
            taken = {e.key.casefold() for e in self._entries if e.folder.resolve() != folder.resolve()}
            taken |= {k.casefold() for k in self.characters}
            if folder.name.casefold() in taken:
                n = 1
                while ((target := self.user_dir / f"{character.folder}_card{n if n > 1 else ''}").exists()
                       or target.name.casefold() in taken):
                    n += 1
                folder.rename(target)
                character = load_character(target, speaker=character.name)
        except HaruhiError as exc:
            raise HaruhiError(f"cannot import {name}: {exc}") from None
        except OSError as exc:
            raise HaruhiError(f"cannot import {name}: {exc.strerror or exc}") from None
        self.scan()
        self._loaded[self.user_dir / character.folder] = character
        self.characters[character.folder] = character
        self.imported.add(character.folder)
        return character

    def remove(self, name: str) -> LibraryEntry:
        """Delete a downloaded or imported character's folder; bundled and configured ones are refused."""
        entry = self.entry(name)
        label = f"{entry.display_name} ({entry.key})"
        if entry.origin == "bundled":
            raise HaruhiError(f"{label} is a starter character bundled with haruhi-tui and cannot be removed")
        if entry.origin == "configured":
            raise HaruhiError(f"{label} is in your characters folder {self.configured_dir}: haruhi-tui removes only "
                              "characters it downloaded or imported; delete that folder yourself if you mean it")
        doomed = entry.folder.with_name(f".{entry.key}.removing")
        try:
            if doomed.exists():
                shutil.rmtree(doomed)
            os.replace(entry.folder, doomed)  # gone from the library at once, even if deleting is cut short
            shutil.rmtree(doomed)
        except OSError as exc:
            raise HaruhiError(f"cannot remove {entry.folder}: {exc.strerror or exc}") from exc
        self._loaded.pop(entry.folder, None)
        self.characters.pop(entry.key, None)
        self.imported.discard(entry.key)
        self.downloaded.discard(entry.key)
        self.scan()
        return entry

    def export_card(self, character: Character, path: str | Path) -> Path:
        """Write ``character`` as a Character Card V2: ``.png`` (the card inside the image) or ``.json``."""
        return export_card(character, path)
