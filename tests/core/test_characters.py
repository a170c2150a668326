import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from haruhi_tui.core.characters import Line, load_character, load_characters, parse_line, parse_scene
from haruhi_tui.core.errors import HaruhiError

ROOT = Path(__file__).resolve().parents[2]
ROLE_PROMPT = "你正在扮演小明，一个爱讲冷笑话的高中生。请保持角色，不要说你是语言模型。"


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
    (folder / "system_prompt.txt").write_text(ROLE_PROMPT, encoding="utf-8")
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


def _folder_with_a_good_scene(tmp_path: Path) -> Path:
    folder = tmp_path / "chars" / "xiaoming"
    (folder / "texts").mkdir(parents=True)
    (folder / "system_prompt.txt").write_text(ROLE_PROMPT, encoding="utf-8")
    (folder / "texts" / "good.txt").write_text("小红:「你好」\n小明:「你好呀」\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("make, expected", [
    (lambda texts: (texts / "gone.txt").symlink_to(texts / "nowhere.txt"), "gone.txt: a broken link"),
    (lambda texts: (texts / "dir.txt").mkdir(), "dir.txt: a folder"),
    (lambda texts: os.mkfifo(texts / "pipe.txt"), "pipe.txt: a broken link or not a regular file"),
])
def test_broken_entries_in_texts_are_skipped_with_a_warning(tmp_path, make, expected):
    folder = _folder_with_a_good_scene(tmp_path)
    make(folder / "texts")
    ch = load_character(folder)
    assert [s.scene_id for s in ch.scenes] == ["xiaoming/good.txt"] and ch.skipped_scenes == 1
    assert any(expected in w and "skipped" in w for w in ch.warnings), ch.warnings


def test_a_broken_role_prompt_link_is_named(tmp_path):
    folder = _folder_with_a_good_scene(tmp_path)
    (folder / "system_prompt.txt").unlink()
    (folder / "system_prompt.txt").symlink_to(folder / "nowhere.txt")
    ch = load_character(folder)
    assert any("system_prompt.txt: a broken link" in w for w in ch.warnings)
    assert ch.role_prompt.startswith("I want you to act like")  # the generic prompt


def test_a_huge_single_line_scene_is_skipped_with_a_warning(tmp_path):
    folder = _folder_with_a_good_scene(tmp_path)
    (folder / "texts" / "huge.txt").write_text("小红:「" + "啊" * 7_000_000 + "」", encoding="utf-8")  # 21 MB, one line
    ch = load_character(folder)
    assert [s.scene_id for s in ch.scenes] == ["xiaoming/good.txt"] and ch.skipped_scenes == 1
    assert any("huge.txt" in w and "7,000,005 characters" in w for w in ch.warnings), ch.warnings


def test_file_names_that_are_not_utf8_become_valid_text(tmp_path):
    folder = _folder_with_a_good_scene(tmp_path)
    with open(os.path.join(os.fsencode(folder / "texts"), b"\xff\xfe.txt"), "wb") as fh:  # not UTF-8
        fh.write("小红:「早」\n小明:「早上好」\n".encode())
    ch = load_character(folder)
    assert sorted(s.scene_id for s in ch.scenes) == ["xiaoming/good.txt", "xiaoming/\ufffd\ufffd.txt"]
    json.dumps([s.scene_id for s in ch.scenes], ensure_ascii=False).encode("utf-8")  # writable as UTF-8


def test_haruhi_data_build_with_broken_entries_works_and_says_so(tmp_path):
    folder = _folder_with_a_good_scene(tmp_path)
    (folder / "texts" / "gone.txt").symlink_to(folder / "texts" / "nowhere.txt")
    (folder / "texts" / "dir.txt").mkdir()
    marked = tmp_path / "chars" / "[red]x"  # a folder name rich would read as markup
    (marked / "texts").mkdir(parents=True)
    (marked / "texts" / "a.txt").write_text("甲:「你好」\n乙:「嗯，你好啊」\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    proc = subprocess.run([sys.executable, "-m", "haruhi_tui.cli", "data", "build", "-c", str(tmp_path / "chars"),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    warnings = proc.stderr
    assert "gone.txt: a broken link" in warnings and "dir.txt: a folder" in warnings
    assert "[red]x: empty or missing system_prompt.txt" in warnings and "[red]x" in proc.stdout
    assert (tmp_path / "out" / "haruhi_train.json").is_file()
