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
    # the role prompt is the description; system_prompt stays empty, or SillyTavern would send it twice
    assert card["name"] == "春日" and card["description"] == haruhi.role_prompt and card["system_prompt"] == ""
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
        "mes_example": "<START>\n{{user}}: Hi Luna\n{{char}}: Wrackspurts are about.\n*She smiles*\n"
                       "{{user}}: Really?\n{{char}}: Oh yes.",
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
    monkeypatch.setattr("haruhi_tui.core.card_format.MAX_CARD_BYTES", 10)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"name": "x" * 100}))
    with pytest.raises(HaruhiError, match="too large"):
        read_card(big)
    not_png = tmp_path / "fake.png"
    not_png.write_text("hello")
    with pytest.raises(HaruhiError, match="not a readable PNG"):
        read_card(not_png)


# -- card import fixes: each of these failed before ------------------------------------------------------
def _card(**fields) -> dict:
    data = {"name": "Mira", "description": "Mira is a lighthouse keeper who talks to {{user}} about ships.",
            "personality": "", "scenario": "", "first_mes": "", "mes_example": ""}
    data.update(fields)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}


def _write(tmp_path, card: dict, name: str = "mira.json"):
    path = tmp_path / name
    path.write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
    return path


def test_a_system_prompt_comes_first_and_description_personality_scenario_still_count(tmp_path):
    path = _write(tmp_path, _card(system_prompt="Write {{original}}as Mira. Stay in character.",
                                  personality="patient, dry humour", scenario="A stormy night at the lighthouse."))
    prompt = import_card(path, tmp_path / "chars").role_prompt
    assert prompt.startswith("Write as Mira. Stay in character.")  # SillyTavern's main prompt is not ours to add
    assert "lighthouse keeper" in prompt
    assert "{{char}}'s personality: patient, dry humour" in prompt
    assert "Scenario: A stormy night at the lighthouse." in prompt
    assert prompt.index("Stay in character") < prompt.index("lighthouse keeper") < prompt.index("patient")


def test_user_and_char_stay_macros_in_every_field(tmp_path):
    path = _write(tmp_path, _card(
        description="<BOT> keeps the light for <USER>.",
        first_mes="*{{Char}} waves at {{USER}}* You made it.",
        post_history_instructions="Answer {{user}} as <bot>.",
        mes_example="<START>\n<USER>: Is the lamp lit?\n{{char}}: Always, {{user}}.\n<START>\n{{User}}: Storm?\n"
                    "<BOT>: *looks out*\nA bad one."))
    mira = import_card(path, tmp_path / "chars")
    assert mira.role_prompt == "{{char}} keeps the light for {{user}}."
    assert mira.manifest.greetings == ("*{{char}} waves at {{user}}* You made it.",)
    assert mira.manifest.post_history_instructions == "Answer {{user}} as {{char}}."
    lines = [(line.speaker, line.text) for scene in mira.scenes for line in scene.lines]
    assert lines == [("{{user}}", "Is the lamp lit?"), ("Mira", "Always, {{user}}."), ("{{user}}", "Storm?"),
                     ("Mira", "*looks out* A bad one.")]
    assert mira.interlocutor == "User"  # whoever the user is: the macro is not a name to play


def test_importing_the_same_card_again_and_again_always_finds_a_free_folder(tmp_path):
    path = _write(tmp_path, _card())
    folders = [import_card(path, tmp_path / "chars").folder for _ in range(4)]
    assert folders == ["Mira", "Mira_card", "Mira_card2", "Mira_card3"]
    assert sorted(p.name for p in (tmp_path / "chars").iterdir()) == sorted(folders)  # no staging left behind


def test_first_mes_is_the_opening_message_not_a_scene(tmp_path):
    path = _write(tmp_path, _card(first_mes="Welcome to the lighthouse.",
                                  alternate_greetings=["Mind the stairs.", "You're soaked!"],
                                  group_only_greetings=["Everyone inside, quick."],
                                  mes_example="<START>\n{{user}}: Hello?\n{{char}}: Up here!"))
    mira = import_card(path, tmp_path / "chars")
    assert mira.manifest.greetings == ("Welcome to the lighthouse.", "Mind the stairs.", "You're soaked!")
    assert mira.manifest.group_greetings == ("Everyone inside, quick.",)
    assert len(mira.scenes) == 1 and "Welcome" not in mira.scenes[0].text()


def test_the_speaking_name_is_stored_so_a_restart_does_not_call_the_character_user(tmp_path):
    from haruhi_tui.core.characters import load_characters

    path = _write(tmp_path, _card(
        description="Mira answers the user's questions about ships.", first_mes="Ahoy.",
        mes_example="<START>\n{{user}}: Hi\n{{user}}: Anyone?\n{{char}}: Here.\n<START>\n{{user}}: Ships?\n"
                    "{{user}}: Any?\n{{char}}: Two."))
    import_card(path, tmp_path / "chars")
    again = load_characters(tmp_path / "chars")  # what the app reads after a restart: no speaker given
    assert [c.name for c in again] == ["Mira"]
    assert json.loads((tmp_path / "chars" / "Mira" / "character.json").read_text(encoding="utf-8"))["name"] == "Mira"


def _colours(png: bytes) -> int:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])


def test_an_exported_card_shows_the_cards_own_picture(tmp_path):
    import io

    from PIL import Image, PngImagePlugin

    picture = Image.new("RGB", (64, 96), (20, 40, 200))
    picture.paste((240, 200, 10), (10, 10, 50, 60))
    info = PngImagePlugin.PngInfo()
    info.add_text("chara", base64.b64encode(json.dumps(_card()).encode()).decode())
    card_png = tmp_path / "mira.png"
    picture.save(card_png, pnginfo=info)
    mira = import_card(card_png, tmp_path / "chars")
    folder = tmp_path / "chars" / mira.folder
    out = export_card(load_character(folder), tmp_path / "out.png")  # as the app does after a restart
    with Image.open(out) as exported, Image.open(folder / "avatar.png") as kept:
        assert exported.size == kept.size == (64, 96)
        assert list(exported.convert("RGB").getdata()) == list(picture.getdata())
        assert "chara" not in kept.text  # the avatar is the picture, not a second copy of the card
    assert read_card(out)["name"] == "Mira"
    with Image.open(io.BytesIO(out.read_bytes())) as again:
        assert again.getpixel((20, 20)) == (240, 200, 10)


def test_a_character_without_a_picture_gets_a_drawn_portrait(characters_dir, tmp_path):
    penny = export_card(load_character(characters_dir / "Penny"), tmp_path / "penny.png").read_bytes()
    haruhi = export_card(load_character(characters_dir / "haruhi"), tmp_path / "haruhi.png").read_bytes()
    assert _colours(penny) > 50 and _colours(haruhi) > 50  # a gradient and lettering, not a plain rectangle
    assert penny != haruhi


def test_mes_example_lines_are_clean_user_and_char_lines(characters_dir, tmp_path):
    haruhi = load_character(characters_dir / "haruhi")
    card = read_card(export_card(haruhi, tmp_path / "haruhi.json"))
    lines = [line for line in card["mes_example"].splitlines() if line != "<START>"]
    assert any(line.startswith("{{user}}: ") for line in lines) and any(line.startswith("{{char}}: ") for line in lines)
    for line in lines:
        if line.startswith(("{{user}}: ", "{{char}}: ")):
            assert "「" not in line and not line.split(": ", 1)[1].startswith(("阿虚", "春日", "User")), line


def test_a_pygmalion_card_with_fullwidth_colons_imports(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"char_name": "老李", "char_persona": "老李是灯塔看守人，话不多，爱讲海上的故事。",
                                "world_scenario": "暴风雨夜", "char_greeting": "进来吧。",
                                "example_dialogue": "<START>\n{{user}}：你好\n{{char}}：嗯。"}, ensure_ascii=False),
                    encoding="utf-8")
    li = import_card(path, tmp_path / "chars")
    assert li.name == "老李" and "灯塔看守人" in li.role_prompt and "Scenario: 暴风雨夜" in li.role_prompt
    assert li.manifest.greetings == ("进来吧。",)
    assert [(line.speaker, line.text) for line in li.scenes[0].lines] == [("{{user}}", "你好"), ("老李", "嗯。")]
