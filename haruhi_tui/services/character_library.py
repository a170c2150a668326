"""The characters the app offers: the configured ChatHaruhi folder plus Character Cards imported into the app's
own characters folder, and cards written back out.

UI-free. A configured character and an imported one never share a folder name: at load a clash keeps the
configured one, and a card is imported under a free name (``haruhi_card``, ``haruhi_card2``…).
"""

from __future__ import annotations

from pathlib import Path

from haruhi_tui.core.cards import export_card, import_card
from haruhi_tui.core.characters import Character, load_characters
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.paths import data_dir


class CharacterLibrary:
    """Configured plus imported characters by folder; ``problem`` says why there are none (or "")."""

    def __init__(self, characters_dir: str | Path, imported_dir: str | Path | None = None) -> None:
        self.characters_dir = Path(characters_dir)
        self._imported_dir = Path(imported_dir) if imported_dir else None
        self.characters: dict[str, Character] = {}
        self.imported: set[str] = set()  # folders of characters imported from cards (marked in the picker)
        self.problem = ""

    @property
    def imported_dir(self) -> Path:
        """Where imported character cards become character folders."""
        return self._imported_dir or data_dir() / "characters"

    def read(self) -> tuple[list[Character], set[str], str]:
        """Read both folders (slow: a thread's work): the characters, which are imported, and the problem."""
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

    def load(self) -> None:
        characters, imported, problem = self.read()
        self.characters = {c.folder: c for c in characters}
        self.imported = imported
        self.problem = problem

    def listing(self) -> list[Character]:
        """Every character, by folder name (the picker's order)."""
        return sorted(self.characters.values(), key=lambda c: c.folder.casefold())

    def find(self, name: str) -> Character | None:
        """The character whose folder or speaking name is ``name`` (any case)."""
        wanted = name.casefold()
        return next((c for c in self.characters.values() if wanted in (c.folder.casefold(), c.name.casefold())), None)

    def import_card(self, path: Path) -> Character:
        """A Character Card V2/V3 (.json, .png or .charx) becomes a character folder in :attr:`imported_dir`,
        never under the folder name of a configured character (``haruhi_card``…); what the card had that
        could not be used is in the character's ``warnings``.

        Raises :class:`HaruhiError` ("cannot import <file>: why") for a bad card or an unwritable folder.
        """
        reserved = [folder for folder in self.characters if folder not in self.imported]
        try:
            character = import_card(path, self.imported_dir, reserved=reserved)
        except HaruhiError as exc:
            raise HaruhiError(f"cannot import {path.name}: {exc}") from None
        except OSError as exc:
            raise HaruhiError(f"cannot import {path.name}: {exc.strerror or exc}") from None
        self.characters[character.folder] = character
        self.imported.add(character.folder)
        self.problem = ""
        return character

    def export_card(self, character: Character, path: Path) -> Path:
        """Write ``character`` as a card: ``.png`` (the card inside the image), ``.json`` or ``.charx``."""
        return export_card(character, path)
