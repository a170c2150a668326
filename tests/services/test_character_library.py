"""The character library: configured characters plus imported cards, never two with one folder name."""

from __future__ import annotations

import pytest

from haruhi_tui.core.cards import export_card
from haruhi_tui.core.characters import load_character
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services.character_library import CharacterLibrary


@pytest.mark.slow
def test_an_imported_card_that_clashes_is_renamed_and_stays_imported(characters_dir, tmp_path):
    card = export_card(load_character(characters_dir / "haruhi"), tmp_path / "haruhi.png")
    library = CharacterLibrary(characters_dir, tmp_path / "imported")
    library.load()
    configured = len(library.characters)
    assert configured >= 30 and not library.imported and not library.problem

    first, second = library.import_card(card), library.import_card(card)
    assert (first.folder, second.folder) == ("haruhi_card", "haruhi_card2")
    assert first.name == second.name == library.characters["haruhi"].name == "春日"
    assert library.imported == {"haruhi_card", "haruhi_card2"}
    assert "haruhi" in library.characters and "haruhi" not in library.imported  # the configured one is kept

    again = CharacterLibrary(characters_dir, tmp_path / "imported")
    characters, imported, problem = again.read()
    assert imported == {"haruhi_card", "haruhi_card2"} and not problem
    assert len({c.folder for c in characters}) == len(characters) == configured + 2
    again.load()
    assert again.find("HARUHI").folder == "haruhi" and again.find("韦小宝").folder == "weixiaobao"
    assert again.find("nobody") is None
    assert [c.folder for c in again.listing()] == sorted(again.characters, key=str.casefold)


def test_a_bad_card_is_one_line_and_changes_nothing(characters_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"spec": "chara_card_v2", "data": ', encoding="utf-8")
    library = CharacterLibrary(characters_dir, tmp_path / "imported")
    library.load()
    before = dict(library.characters)
    with pytest.raises(HaruhiError, match=r"^cannot import bad\.json: ") as caught:
        library.import_card(bad)
    assert "\n" not in str(caught.value)
    assert library.characters == before and not library.imported


def test_an_empty_characters_folder_says_what_to_do(tmp_path):
    (tmp_path / "none").mkdir()
    library = CharacterLibrary(tmp_path / "none", tmp_path / "imported")
    library.load()
    assert not library.characters and "HARUHI_CHARACTERS" in library.problem
