from pathlib import Path

import pytest

from haruhi_tui.core.characters import Line, load_character, load_characters, parse_line, parse_scene
from haruhi_tui.core.errors import HaruhiError


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("春日:「我已经想好了！」", Line("春日", "我已经想好了！")),
        ("雷电将军：「非常感谢你们。」", Line("雷电将军", "非常感谢你们。")),          # full-width colon
        ("春日:「干什么」(拿出站位表)", Line("春日", "干什么(拿出站位表)")),            # stage direction kept
        ("韦小宝:辣块妈妈", Line("韦小宝", "辣块妈妈")),                                  # no 「」
        ("Harry:「Of course not,」", Line("Harry", "Of course not,")),                  # English
        (":茅十八打伤敌人", Line(None, "茅十八打伤敌人")),                                  # empty speaker = narration
        ("旁白：夜深了", Line(None, "夜深了")),
        ("scene:悟空修炼法性", Line(None, "悟空修炼法性")),
        ("'''Scene''':「''All five in Leonard’s car.''」", Line(None, "All five in Leonard’s car.")),
        ("Narrator: The hall falls silent.", Line(None, "The hall falls silent.")),
        ("一行没有冒号的叙述", Line(None, "一行没有冒号的叙述")),
        ("春日:「没有结尾的引号", Line("春日", "没有结尾的引号")),
        ("   ", None),
        ("阿虚:「」", None),
    ],
)
def test_parse_line_variations(raw, expected):
    assert parse_line(raw) == expected


def test_long_prefix_with_colon_is_narration():
    line = parse_line("这是一段很长很长很长很长很长的叙述文字，里面恰好有一个冒号：然后继续")
    assert line is not None and line.speaker is None


def test_scene_skips_blank_lines_and_keeps_order():
    scene = parse_scene("x/a.txt", "\n阿虚:「一」\n\n春日：「二」\n旁白:三\n")
    assert [line.speaker for line in scene.lines] == ["阿虚", "春日", None]


@pytest.mark.parametrize("folder, name", [("haruhi", "春日"), ("weixiaobao", "韦小宝"), ("Harry", "Harry"),
                                          ("raidenShogun", "雷电将军"), ("McGonagall", "Professor McGonagall")])
def test_speaking_name_detected_on_real_data(characters_dir, folder, name):
    assert load_character(characters_dir / folder).name == name


def test_empty_prompt_warns_and_speaker_override(characters_dir):
    megumi = load_character(characters_dir / "Megumi")
    assert any("system_prompt" in w for w in megumi.warnings)
    assert any("--speaker Megumi=" in w for w in megumi.warnings)
    chosen = load_character(characters_dir / "Megumi", speaker="加藤")
    assert chosen.name == "加藤" and "加藤" in chosen.role_prompt


def test_haruhi_metadata(characters_dir):
    haruhi = load_character(characters_dir / "haruhi")
    assert haruhi.interlocutor == "阿虚"
    assert haruhi.first_line
    assert len(haruhi.scenes) > 100


def test_tolerates_gb18030_undecodable_empty_and_non_ascii_names(tmp_path: Path):
    folder = tmp_path / "chars" / "测试"
    (folder / "texts").mkdir(parents=True)
    (folder / "system_prompt.txt").write_text("你正在扮演小明，一个爱讲冷笑话的高中生。请保持角色，不要说你是语言模型。", encoding="utf-8")
    (folder / "texts" / "场景一.txt").write_text("小红:「你好」\n小明:「你好呀」\n", encoding="utf-8")
    (folder / "texts" / "gbk.txt").write_bytes("小红:「早」\n小明:「早上好」\n".encode("gb18030"))
    (folder / "texts" / "binary.txt").write_bytes(b"\xff\xfe\x00\xd8\x00")
    (folder / "texts" / "empty.txt").write_text("\n\n", encoding="utf-8")
    ch = load_character(folder)
    assert ch.name == "小明"
    assert len(ch.scenes) == 2
    assert ch.skipped_scenes == 2
    assert any("binary.txt" in w for w in ch.warnings)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(HaruhiError, match="not found"):
        load_characters(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HaruhiError, match="no character folders"):
        load_characters(tmp_path / "empty")
