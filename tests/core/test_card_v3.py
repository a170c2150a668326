"""Character Card V3: ccv3 PNG chunks, JSON, CHARX zips, nicknames, group greetings, lorebooks (V2 and V3
books to SillyTavern world info and back), depth prompts, the main icon as the avatar; V3 export."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest
from PIL import Image

from haruhi_tui.core.card_format import png_chunks, read_card_file
from haruhi_tui.core.cards import export_card, import_card, read_card
from haruhi_tui.core.character_manifest import DepthPrompt
from haruhi_tui.core.characters import load_character
from haruhi_tui.core.errors import HaruhiError

V3_BOOK = {
    "name": "Harbour lore", "description": "places and people", "scan_depth": 3, "token_budget": 400,
    "recursive_scanning": False, "extensions": {},
    "entries": [
        {"keys": ["lighthouse", "lamp"], "content": "The lamp has burned for 90 years.", "extensions": {},
         "enabled": True, "insertion_order": 10, "use_regex": False, "constant": False, "id": 7,
         "comment": "the lamp", "case_sensitive": False, "priority": 5, "name": "Lamp",
         "selective": True, "secondary_keys": ["night"], "position": "before_char"},
        {"keys": ["^storm(s)?$"], "content": "@@depth 2\nStorms come from the west.", "extensions": {"depth": 2},
         "enabled": False, "insertion_order": 20, "use_regex": True, "constant": True, "position": "after_char"},
    ],
}


def v3_card(**fields) -> dict:
    data = {
        "name": "Mira", "description": "Mira keeps the lighthouse for {{user}}.", "personality": "dry humour",
        "scenario": "", "first_mes": "You're late, {{user}}.", "alternate_greetings": ["Storm's coming."],
        "group_only_greetings": ["All of you? Inside."], "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Hm.",
        "creator_notes": "A quiet card.", "system_prompt": "", "post_history_instructions": "Keep {{char}} terse.",
        "tags": ["sea", "slice of life"], "creator": "ann", "character_version": "1.2", "nickname": "Mimi",
        "extensions": {"depth_prompt": {"prompt": "{{char}} never lies.", "depth": 2, "role": "system"},
                       "talkativeness": "0.4"},
        "character_book": V3_BOOK, "source": ["https://example.org/cards/mira"], "creation_date": 1700000000,
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
    }
    data.update(fields)
    return {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}


def png_with(chunks: dict[str, dict], colour=(30, 60, 90)) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for keyword, card in chunks.items():
        info.add_text(keyword, base64.b64encode(json.dumps(card).encode()).decode())
    out = io.BytesIO()
    Image.new("RGB", (32, 48), colour).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def text_chunks(png: bytes) -> dict[str, dict]:
    found = {}
    for kind, body in png_chunks(png):
        if kind == b"tEXt":
            keyword, _, text = body.partition(b"\0")
            found[keyword.decode()] = json.loads(base64.b64decode(text))
    return found


def test_the_ccv3_chunk_wins_over_chara(tmp_path):
    old = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {**v3_card()["data"], "name": "Old Mira"}}
    path = tmp_path / "both.png"
    path.write_bytes(png_with({"chara": old, "ccv3": v3_card()}))
    assert read_card(path)["name"] == "Mira"
    assert read_card_file(path).spec == "chara_card_v3"


def test_a_v3_card_becomes_a_folder_with_everything_it_says(tmp_path):
    path = tmp_path / "mira.json"
    path.write_text(json.dumps(v3_card()), encoding="utf-8")
    mira = import_card(path, tmp_path / "chars")
    m = mira.manifest
    assert mira.name == m.name == "Mira" and m.nickname == "Mimi"
    assert m.greetings == ("You're late, {{user}}.", "Storm's coming.")
    assert m.group_greetings == ("All of you? Inside.",)
    assert m.post_history_instructions == "Keep {{char}} terse."
    assert m.depth_prompt == DepthPrompt("{{char}} never lies.", 2, "system")
    assert m.creator_notes == "A quiet card." and m.tags == ("sea", "slice of life")
    assert (m.source.kind, m.source.url, m.source.attribution) == ("card", "https://example.org/cards/mira", "ann")
    assert mira.role_prompt == "Mira keeps the lighthouse for {{user}}.\n\n{{char}}'s personality: dry humour"

    world = json.loads((tmp_path / "chars" / "Mira" / "lorebook.json").read_text(encoding="utf-8"))
    lamp, storm = world["entries"]["7"], world["entries"]["0"]
    assert lamp["uid"] == 7 and lamp["key"] == ["lighthouse", "lamp"] and lamp["keysecondary"] == ["night"]
    assert lamp["content"] == "The lamp has burned for 90 years." and lamp["comment"] == "the lamp"
    flags = (lamp["order"], lamp["position"], lamp["disable"], lamp["selective"], lamp["constant"])
    assert flags == (10, 0, False, True, False)
    assert lamp["caseSensitive"] is False and lamp["depth"] == 4 and lamp["probability"] == 100
    assert (storm["position"], storm["disable"], storm["constant"], storm["depth"]) == (1, True, True, 2)
    assert storm["content"].startswith("@@depth 2")  # decorators are the lorebook engine's to read
    assert world["originalData"]["scan_depth"] == 3


def test_a_v2_book_becomes_world_info_too(tmp_path):
    book = {"entries": [{"keys": ["Mira"], "content": "Mira was a sailor.", "enabled": True, "insertion_order": 100,
                         "extensions": {"position": 4, "depth": 1, "role": 1}}, "junk"]}
    card = {"spec": "chara_card_v2", "spec_version": "2.0",
            "data": {"name": "Mira", "description": "Keeper of the light at the harbour.", "character_book": book}}
    path = tmp_path / "mira.json"
    path.write_text(json.dumps(card), encoding="utf-8")
    mira = import_card(path, tmp_path / "chars")
    entry = json.loads((tmp_path / "chars" / "Mira" / "lorebook.json").read_text(encoding="utf-8"))["entries"]["0"]
    assert (entry["key"], entry["position"], entry["depth"], entry["role"]) == (["Mira"], 4, 1, 1)
    assert any("skipped" in w for w in mira.warnings)


def charx(card: dict, files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("card.json", json.dumps(card))
        for name, blob in files.items():
            archive.writestr(name, blob)
    return out.getvalue()


def picture(colour, fmt="PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 30), colour).save(out, format=fmt)
    return out.getvalue()


def test_a_charx_card_keeps_its_main_icon_as_the_avatar(tmp_path):
    assets = [{"type": "icon", "uri": "embeded://assets/icon/images/side.png", "name": "side", "ext": "png"},
              {"type": "icon", "uri": "embeded://assets/icon/images/main.webp", "name": "main", "ext": "webp"},
              {"type": "background", "uri": "embeded://assets/background/images/sea.png", "name": "sea", "ext": "png"}]
    path = tmp_path / "mira.charx"
    path.write_bytes(charx(v3_card(assets=assets), {
        "assets/icon/images/side.png": picture((255, 0, 0)),
        "assets/icon/images/main.webp": picture((0, 200, 0), "WEBP"),
        "assets/background/images/sea.png": picture((0, 0, 255)),
    }))
    mira = import_card(path, tmp_path / "chars")
    with Image.open(tmp_path / "chars" / "Mira" / "avatar.png") as avatar:
        assert avatar.format == "PNG" and avatar.size == (20, 30)
        r, g, b = avatar.convert("RGB").getpixel((10, 10))
        assert g > 150 and r < 60 and b < 60  # the main icon (webp, converted), not the first icon
    assert any("not kept" in w for w in mira.warnings)  # the background and the side icon


@pytest.mark.parametrize("files, problem", [
    ({"readme.txt": b"hi"}, "without card.json"),
    ({"card.json": b"{oops"}, "does not parse"),
])
def test_a_bad_charx_is_a_one_line_error(tmp_path, files, problem):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, blob in files.items():
            archive.writestr(name, blob)
    path = tmp_path / "bad.charx"
    path.write_bytes(out.getvalue())
    with pytest.raises(HaruhiError, match=problem):
        import_card(path, tmp_path / "chars")
    assert not (tmp_path / "chars").exists() or not any((tmp_path / "chars").iterdir())


def test_a_card_over_pillows_text_chunk_limit_still_reads(tmp_path):
    big = {"entries": [{"keys": [f"k{i}"], "content": "x" * 2000, "enabled": True, "insertion_order": i,
                        "extensions": {}} for i in range(700)]}
    path = tmp_path / "big.png"
    path.write_bytes(png_with({"chara": v3_card(character_book=big)}))
    assert path.stat().st_size > 1 << 20
    assert len(read_card(path)["character_book"]["entries"]) == 700


def test_a_broken_lorebook_leaves_no_folder_behind(tmp_path):
    path = tmp_path / "mira.json"
    path.write_text(json.dumps(v3_card(character_book={"entries": "nope"})), encoding="utf-8")
    with pytest.raises(HaruhiError, match="character_book"):
        import_card(path, tmp_path / "chars")
    assert not (tmp_path / "chars").exists() or not any((tmp_path / "chars").iterdir())


def test_v3_export_writes_both_chunks_and_gives_back_what_was_imported(tmp_path):
    source = tmp_path / "mira.png"
    source.write_bytes(png_with({"ccv3": v3_card()}, colour=(200, 100, 50)))
    mira = import_card(source, tmp_path / "chars")
    folder = tmp_path / "chars" / mira.folder
    out = export_card(mira, tmp_path / "out.png", folder=folder)
    chunks = text_chunks(out.read_bytes())
    assert chunks["chara"]["spec"] == "chara_card_v2" and chunks["ccv3"]["spec"] == "chara_card_v3"
    assert chunks["chara"]["data"] == chunks["ccv3"]["data"]
    data, original = chunks["ccv3"]["data"], v3_card()["data"]
    for key in ("name", "description", "personality", "scenario", "system_prompt", "first_mes",
                "alternate_greetings", "group_only_greetings", "post_history_instructions", "nickname", "tags",
                "creator", "character_version", "creator_notes", "source", "creation_date"):
        assert data[key] == original[key], key
    assert data["extensions"]["depth_prompt"] == original["extensions"]["depth_prompt"]
    assert data["extensions"]["talkativeness"] == "0.4"  # another app's extension survives
    assert data["mes_example"] == original["mes_example"]
    book = data["character_book"]
    assert {k: book[k] for k in ("name", "scan_depth", "token_budget")} == {"name": "Harbour lore", "scan_depth": 3,
                                                                           "token_budget": 400}
    by_id = {str(e["id"]): e for e in book["entries"]}
    for before in V3_BOOK["entries"]:
        after = by_id[str(before.get("id", 0))]
        for key in ("keys", "content", "enabled", "insertion_order", "use_regex", "constant", "position",
                    "secondary_keys", "priority", "name", "case_sensitive", "comment"):
            if key in before:
                assert after[key] == before[key], (key, after)
    with Image.open(out) as image:
        assert image.convert("RGB").getpixel((5, 5)) == (200, 100, 50)

    again = import_card(out, tmp_path / "again")
    assert again.manifest == mira.manifest and again.role_prompt == mira.role_prompt
    assert [s.text() for s in again.scenes] == [s.text() for s in mira.scenes]
    assert json.loads((tmp_path / "again" / "Mira" / "lorebook.json").read_text(encoding="utf-8"))["entries"] == \
        json.loads((folder / "lorebook.json").read_text(encoding="utf-8"))["entries"]


def test_json_export_is_v3_and_v2_stays_available(characters_dir, tmp_path):
    haruhi = load_character(characters_dir / "haruhi")
    v3 = json.loads(export_card(haruhi, tmp_path / "h.json").read_text(encoding="utf-8"))
    assert v3["spec"] == "chara_card_v3" and v3["spec_version"] == "3.0" and v3["data"]["group_only_greetings"] == []
    assert v3["data"]["assets"][0]["type"] == "icon" and v3["name"] == "春日"
    v2 = json.loads(export_card(haruhi, tmp_path / "h2.json", version=2).read_text(encoding="utf-8"))
    assert v2["spec"] == "chara_card_v2" and v2["data"]["name"] == "春日"
    png = export_card(haruhi, tmp_path / "h2.png", version=2).read_bytes()
    assert set(text_chunks(png)) == {"chara"}
    back = import_card(tmp_path / "h2.json", tmp_path / "chars")
    assert back.name == "春日" and back.role_prompt == haruhi.role_prompt and len(back.scenes) == len(haruhi.scenes)


def test_charx_export_reads_back_with_its_picture(tmp_path):
    source = tmp_path / "mira.png"
    source.write_bytes(png_with({"ccv3": v3_card()}, colour=(10, 120, 240)))
    mira = import_card(source, tmp_path / "chars")
    out = export_card(mira, tmp_path / "mira.charx")
    with zipfile.ZipFile(out) as archive:
        assert json.loads(archive.read("card.json"))["data"]["assets"][0]["uri"].startswith("embeded://assets/icon/")
    again = import_card(out, tmp_path / "again")
    assert again.manifest == mira.manifest
    with Image.open(tmp_path / "again" / "Mira" / "avatar.png") as avatar:
        assert avatar.convert("RGB").getpixel((3, 3)) == (10, 120, 240)
