"""Cards and character folders shaped in ways nobody meant: each imports, exports, or is a one-line error, never
an exception (which crashed the app on import or export)."""

from __future__ import annotations

import json
import stat

import pytest

from haruhi_tui.core.cards import MAX_FOLDER_CHARS, export_card, import_card
from haruhi_tui.core.characters import load_character
from haruhi_tui.core.errors import HaruhiError


def _card(**fields) -> dict:
    data = {"name": "Mira", "description": "Mira keeps the lighthouse and talks to {{user}} about ships.",
            "first_mes": "You're late.", "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Hm."}
    data.update(fields)
    return {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}


def _write(tmp_path, card: dict, name: str = "mira.json"):
    path = tmp_path / name
    path.write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
    return path


def _round_trip(tmp_path, card: dict):
    """Import, export in every format, import the PNG again: the character of the first import."""
    character = import_card(_write(tmp_path, card), tmp_path / "characters")
    for suffix in (".png", ".json", ".charx"):
        export_card(character, tmp_path / f"out{suffix}")
    import_card(tmp_path / "out.png", tmp_path / "again")
    return character


@pytest.mark.parametrize("ours", [
    {"scenes": ["a scene as a bare string", "another"]},     # the example
    {"scenes": [{"id": ["x"], "text": 5}, {"id": None}, 7]},
    {"folder": 5},                                            # the example
    {"folder": [1, 2]},
    {"folder": "../.."},
    "not an object",
    {"manifest": [1]},
])
def test_our_extension_with_the_wrong_shapes_still_imports(tmp_path, ours):
    character = _round_trip(tmp_path, _card(extensions={"haruhi_tui": ours}))
    assert character.name == "Mira" and character.scenes
    assert (tmp_path / "characters" / character.folder).parent == tmp_path / "characters"


@pytest.mark.parametrize("speaker", [7, ["Mira"], "   ", None])
def test_a_speaking_name_that_is_not_text_falls_back_to_the_cards_name(tmp_path, speaker):
    """An empty speaker made the folder speak as '{{user}}'; a list made it speak as "['Mira']"."""
    character = _round_trip(tmp_path, _card(extensions={"haruhi_tui": {"speaker": speaker}}))
    assert character.name == "Mira"


def test_extensions_that_are_not_an_object_are_a_one_line_error(tmp_path):
    """The issue's example: ``extensions`` as a string."""
    with pytest.raises(HaruhiError, match="'extensions' must be an object"):
        import_card(_write(tmp_path, _card(extensions="oops")), tmp_path / "characters")
    assert not (tmp_path / "characters").exists()


def test_lorebook_entries_with_odd_fields_survive_import_and_export(tmp_path):
    """An entry whose ``extensions`` was a string imported, then broke every export (ValueError)."""
    book = {"entries": [5, {"keys": 5, "content": 3},
                        {"keys": ["storm"], "content": "Storms wreck ships.", "insertion_order": "x",
                         "extensions": "s"},
                        {"keys": "tide", "content": "Tides.", "extensions": {"display_index": "first"}}]}
    character = _round_trip(tmp_path, _card(character_book=book))
    card = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    contents = [e["content"] for e in card["data"]["character_book"]["entries"]]
    assert sorted(contents) == ["Storms wreck ships.", "Tides."] and character.warnings


def test_a_hand_edited_lorebook_with_odd_fields_exports(tmp_path):
    character = import_card(_write(tmp_path, _card()), tmp_path / "characters")
    world = {"entries": {"0": {"uid": 0, "key": 5, "content": "a", "extensions": "s", "displayIndex": "x"},
                         "1": {"uid": [1], "key": ["b"], "content": "b", "displayIndex": 0}},
             "originalData": {"entries": [{"id": 0, "extensions": 3}], "name": 5}}
    (character.path / "lorebook.json").write_text(json.dumps(world), encoding="utf-8")
    export_card(load_character(character.path), tmp_path / "out.json")
    card = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert sorted(e["content"] for e in card["data"]["character_book"]["entries"]) == ["a", "b"]


@pytest.mark.parametrize("source, message", [
    ({"name": "Mira", "extensions": "s"}, "'extensions' must be an object"),
    ({"name": "Mira", "system_prompt": 5}, "'system_prompt' must be text"),
    ({"name": "Mira", "tags": [1]}, "'tags' must be a list of texts"),
    ([1], "expected a JSON object"),
])
def test_a_hand_edited_source_card_is_a_one_line_error_on_export(tmp_path, source, message):
    """source_card.json (what the imported card said) with the wrong types gave AttributeError/TypeError."""
    character = import_card(_write(tmp_path, _card()), tmp_path / "characters")
    (character.path / "source_card.json").write_text(json.dumps(source), encoding="utf-8")
    with pytest.raises(HaruhiError, match=message):
        export_card(load_character(character.path), tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_a_very_long_name_makes_a_short_folder_name(tmp_path):
    """A 5,000-character name made a folder name the file system refused (File name too long)."""
    character = import_card(_write(tmp_path, _card(name="x" * 5000)), tmp_path / "characters")
    assert len(character.folder) == MAX_FOLDER_CHARS and character.name == "x" * 5000


def test_an_imported_character_folder_is_readable_like_any_other(tmp_path):
    """The folder was the staging temp folder renamed into place: 0700, unreadable for others."""
    character = import_card(_write(tmp_path, _card()), tmp_path / "characters")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [character.path, *character.path.rglob("*")]}
    assert modes.pop(character.path.name) == 0o755 and modes.pop("texts") == 0o755
    assert set(modes.values()) == {0o644}, modes
    assert [p.name for p in (tmp_path / "characters").iterdir()] == [character.folder]
