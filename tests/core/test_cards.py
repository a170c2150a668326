import base64
import json

import pytest

from haruhi_tui.core.cards import export_card, import_card, read_card
from haruhi_tui.core.characters import load_character
from haruhi_tui.core.errors import HaruhiError


@pytest.mark.parametrize("suffix", [".json", ".png"])
def test_card_round_trip_keeps_prompt_name_and_scenes(characters_dir, tmp_path, suffix):
    haruhi = load_character(characters_dir / "haruhi")
    path = export_card(haruhi, tmp_path / f"haruhi{suffix}")
    card = read_card(path)
    assert card["name"] == "春日" and card["system_prompt"] == haruhi.role_prompt
    assert "<START>" in card["mes_example"] and "{{char}}" in card["mes_example"]
    back = import_card(path, tmp_path / "chars")
    assert back.name == "春日"
    assert back.role_prompt == haruhi.role_prompt
    assert len(back.scenes) == len(haruhi.scenes)
    assert [line.text for line in back.scenes[0].lines] == [line.text for line in haruhi.scenes[0].lines]


def test_png_card_is_a_real_png_with_chara_chunk(characters_dir, tmp_path):
    from PIL import Image

    path = export_card(load_character(characters_dir / "Penny"), tmp_path / "penny.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        card = json.loads(base64.b64decode(image.text["chara"]))
    assert card["spec"] == "chara_card_v2" and card["data"]["name"] == "Penny"


def test_community_card_without_our_extension_imports(tmp_path):
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": "Luna Test", "description": "A dreamy witch.", "personality": "odd, kind", "scenario": "Hogwarts",
        "first_mes": "Hello, have you seen any Nargles?",
        "mes_example": "<START>\n{{user}}: Hi Luna\n{{char}}: Wrackspurts are about.\n*She smiles*\n{{user}}: Really?\n{{char}}: Oh yes.",
    }}
    path = tmp_path / "luna.json"
    path.write_text(json.dumps(card))
    ch = import_card(path, tmp_path / "chars")
    assert ch.name == "Luna Test" and "dreamy witch" in ch.role_prompt and "Hogwarts" in ch.role_prompt
    assert any(line.speaker == "Luna Test" and "Wrackspurts" in line.text for s in ch.scenes for line in s.lines)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "does not parse"),
    (b"[1, 2]", "expected a JSON object"),
    (json.dumps({"spec": "chara_card_v2", "data": {"name": ""}}).encode(), "no name"),
    (json.dumps({"spec": "chara_card_v2", "data": {"name": "x", "description": 5}}).encode(), "must be text"),
])
def test_malformed_cards_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(HaruhiError, match=message):
        read_card(path)


def test_png_without_card_and_oversized_card(tmp_path, monkeypatch):
    from PIL import Image

    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    with pytest.raises(HaruhiError, match="no character card"):
        read_card(plain)
    monkeypatch.setattr("haruhi_tui.core.cards.MAX_CARD_BYTES", 10)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"name": "x" * 100}))
    with pytest.raises(HaruhiError, match="too large"):
        read_card(big)
    not_png = tmp_path / "fake.png"
    not_png.write_text("hello")
    with pytest.raises(HaruhiError, match="not a readable PNG"):
        read_card(not_png)
