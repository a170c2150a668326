"""The character library: the bundled starters, <data dir>/characters (downloaded, imported cards) and the
configured folder, never two with one folder name; and the `haruhi characters` commands. Every test gets a
fresh HARUHI_HOME; files are real."""

from __future__ import annotations

import filecmp
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from haruhi_tui.core import paths
from haruhi_tui.core.cards import export_card
from haruhi_tui.core.characters import load_character
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.paths import bundled_characters_dir, bundled_notice, data_dir
from haruhi_tui.services.character_library import CharacterLibrary

ROOT = Path(__file__).resolve().parents[2]
STARTERS = {"haruhi", "weixiaobao", "Hermione", "Harry", "liyunlong", "wukong", "raidenShogun"}


@pytest.fixture(autouse=True)
def no_configured_folder(monkeypatch):
    monkeypatch.delenv("HARUHI_CHARACTERS", raising=False)


def _character(root: Path, folder: str, speaker: str = "甲") -> Path:
    (root / folder / "texts").mkdir(parents=True)
    (root / folder / "system_prompt.txt").write_text(f"你正在扮演{speaker}，说话简短而且有礼貌。", encoding="utf-8")
    (root / folder / "texts" / "a.txt").write_text(f"{speaker}:「你好，今天天气不错。」\n乙:「是啊。」\n",
                                                   encoding="utf-8")
    return root / folder


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
    assert set(library.characters) == STARTERS and "HARUHI_CHARACTERS" in library.problem  # the starters stay


def test_a_fresh_install_has_the_attributed_starters_and_never_reads_shared(characters_dir):
    library = CharacterLibrary()
    assert {e.key for e in library.entries()} == STARTERS and not library.problems
    assert {e.origin for e in library.entries()} == {"bundled"}
    haruhi = library.entry("春日")
    assert haruhi.key == "haruhi" and haruhi.display_name == "凉宫春日" and haruhi.name == "春日"
    for entry in library.entries():
        assert entry.source.kind == "chatharuhi" and entry.licence == "CC BY-NC 4.0"
        assert "Chat-Haruhi-Suzumiya" in entry.source.attribution and entry.work
        assert not entry.folder.resolve().is_relative_to(characters_dir.resolve())
        # copied unchanged from ChatHaruhi: the same role prompt and scenes as the development copy
        same = filecmp.dircmp(entry.folder / "texts", characters_dir / entry.key / "texts")
        assert not same.left_only and not same.right_only and not same.diff_files
        assert filecmp.cmp(entry.folder / "system_prompt.txt", characters_dir / entry.key / "system_prompt.txt",
                           shallow=False)
        assert entry.load().name == load_character(characters_dir / entry.key).name == entry.manifest.name
    notice = (ROOT / "NOTICE").read_text(encoding="utf-8")
    assert bundled_notice().read_text(encoding="utf-8") == notice
    assert "CC BY-NC 4.0" in notice and all(folder in notice for folder in STARTERS)
    assert not hasattr(paths, "_DEV_CHARACTERS")
    assert paths.user_characters_dir() == data_dir() / "characters" and paths.configured_characters_dir() is None


def test_precedence_configured_then_user_then_bundled(tmp_path):
    configured = tmp_path / "mine"
    _character(configured, "haruhi", "春日")
    _character(configured, "own", "丙")
    user = data_dir() / "characters"
    _character(user, "haruhi", "春日")
    _character(user, "Harry", "Harry")
    library = CharacterLibrary(configured)
    origins = {e.key: e.origin for e in library.entries()}
    assert origins["haruhi"] == "configured" and origins["own"] == "configured"
    assert origins["Harry"] == "imported" and origins["wukong"] == "bundled"
    assert len(library) == len(STARTERS) + 1
    hidden = {(h.key, h.origin, by.origin) for h, by in library.shadowed}
    assert hidden == {("haruhi", "imported", "configured"), ("haruhi", "bundled", "configured"),
                      ("Harry", "bundled", "imported")}
    assert library.entry("haruhi").folder == configured / "haruhi"
    assert library.origin_of("own") == "configured" and library.entry("Own").source.kind == "local"


def test_a_broken_configured_folder_is_a_problem_and_the_starters_stay(tmp_path):
    library = CharacterLibrary(tmp_path / "missing")
    assert library.problems == [f"characters folder not found: {tmp_path / 'missing'} (check --characters or "
                                "$HARUHI_CHARACTERS)"]
    assert {e.key for e in library.entries()} == STARTERS
    (tmp_path / "empty").mkdir()
    assert "no character folders in" in CharacterLibrary(tmp_path / "empty").problems[0]
    broken = _character(data_dir() / "characters", "broken")
    (broken / "character.json").write_text("{", encoding="utf-8")
    library = CharacterLibrary()
    assert "broken" not in {e.key for e in library.entries()}
    assert library.problems[0].startswith("skipped broken: ") and "not valid JSON" in library.problems[0]


def test_import_remove_and_what_cannot_be_removed(tmp_path, characters_dir):
    card = export_card(load_character(characters_dir / "haruhi"), tmp_path / "haruhi.png")
    library = CharacterLibrary()
    character = library.import_card(card)
    assert character.folder == "haruhi_card" and character.name == "春日"  # the bundled haruhi keeps its name
    entry = library.entry("haruhi_card")
    assert entry.origin == "imported" and entry.source.kind == "card" and entry.removable
    assert library.imported == {"haruhi_card"} and library.characters["haruhi_card"] is character
    with pytest.raises(HaruhiError, match=r"凉宫春日 \(haruhi\) is a starter character bundled with haruhi-tui and "
                                          "cannot be removed"):
        library.remove("haruhi")
    configured = CharacterLibrary(_character(tmp_path / "mine", "own").parent)
    with pytest.raises(HaruhiError, match="is in your characters folder .*mine: haruhi-tui removes only"):
        configured.remove("own")
    assert (tmp_path / "mine" / "own").is_dir()
    removed = library.remove("haruhi_card")
    assert removed.key == "haruhi_card" and not (data_dir() / "characters" / "haruhi_card").exists()
    assert not list((data_dir() / "characters").iterdir())  # nothing half-deleted left behind
    with pytest.raises(HaruhiError, match=r"no character 'haruhi_crad' in the library \(did you mean haruhi_card\?\)|"
                                          r"no character 'haruhi_crad' in the library \(did you mean haruhi"):
        library.entry("haruhi_crad")


def test_removing_a_download_brings_back_the_bundled_one(tmp_path):
    user = data_dir() / "characters"
    shutil.copytree(bundled_characters_dir() / "liyunlong", user / "liyunlong")
    manifest = user / "liyunlong" / "character.json"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(
        "https://github.com/LC1332/Chat-Haruhi-Suzumiya",
        "https://huggingface.co/datasets/silk-road/ChatHaruhi-RolePlaying/blob/main/liyunlong.jsonl", 1),
        encoding="utf-8")
    library = CharacterLibrary()
    assert library.entry("李云龙").origin == "downloaded"
    library.remove("李云龙")
    assert library.entry("李云龙").origin == "bundled"


# -- the `haruhi characters` commands and `haruhi data build` on a fresh install ---------------------------

@pytest.fixture(scope="module")
def cli():
    from haruhi_tui.cli import app

    return app


def test_list_reads_at_80_columns(cli):
    result = CliRunner().invoke(cli, ["characters", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(cell_len(line.rstrip()) for line in lines) <= 80
    row = next(line for line in lines if "凉宫春日" in line)
    assert "bundled" in row and "chatharuhi" in row and "CC BY-NC 4.0" in row
    assert sum("bundled" in line and "chatharuhi" in line for line in lines) == len(STARTERS)
    assert "NOTICE" in result.output.replace("\n", "")  # where the attribution is
    hub = CliRunner().invoke(cli, ["characters", "list", "--hub"], env={"COLUMNS": "80"})
    assert hub.exit_code == 0 and max(cell_len(line.rstrip()) for line in hub.output.splitlines()) <= 80
    assert "Jack Sparrow" in hub.output and "CC BY 4.0" in hub.output
    assert next(line for line in hub.output.splitlines() if "凉宫春日" in line).rstrip().endswith("bundled")


def test_get_import_export_remove_through_the_command(cli, hub, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["characters", "get", "Luna", "Jack Sparrow"])
    assert result.exit_code == 0, result.output
    assert "added 2: Luna Lovegood (Luna), Jack Sparrow (Jack_Sparrow)" in result.output
    again = runner.invoke(cli, ["characters", "get", "Luna"])
    assert again.exit_code == 0 and "Luna Lovegood (Luna): already downloaded" in again.output
    missing = runner.invoke(cli, ["characters", "get", "Doctor Who"])
    assert missing.exit_code == 1 and "not on the hub (any more): Doctor Who" in missing.output
    neither = runner.invoke(cli, ["characters", "get"])
    assert neither.exit_code == 1 and "pass --all" in neither.output
    every = runner.invoke(cli, ["characters", "get", "--all"])  # the local hub holds only a few of the 127
    assert every.exit_code == 0, every.output
    assert "8 already in the library" in every.output and "not on the hub (any more): tangshiye" in every.output
    assert "(119 in all)" in every.output  # 6 starters are ChatHaruhi's, 2 were fetched above
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    offline = runner.invoke(cli, ["characters", "get", "Ron"], env={"HF_ENDPOINT": closed})
    [line] = offline.output.strip().splitlines()  # one line (the progress bar leaves nothing behind)
    assert offline.exit_code == 1 and line.startswith("error: cannot reach the Hugging Face hub: you are offline")

    listed = runner.invoke(cli, ["characters", "list"], env={"COLUMNS": "80"})
    sparrow = next(line for line in listed.output.splitlines() if "Jack Sparrow" in line)
    assert "downloaded" in sparrow and "rolellm" in sparrow and "CC BY 4.0" in sparrow

    card = tmp_path / "luna.json"
    assert runner.invoke(cli, ["characters", "export", "Luna Lovegood", str(card)]).exit_code == 0
    imported = runner.invoke(cli, ["characters", "import", str(card)])
    assert imported.exit_code == 0 and "as Luna_card into" in imported.output
    bundled = runner.invoke(cli, ["characters", "remove", "haruhi", "--yes"])
    assert bundled.exit_code == 1 and "cannot be removed" in bundled.output
    assert runner.invoke(cli, ["characters", "remove", "Luna_card"], input="n\n").exit_code == 1  # asked, declined
    assert (data_dir() / "characters" / "Luna_card").is_dir()
    gone = runner.invoke(cli, ["characters", "remove", "Luna_card"], input="y\n")
    assert gone.exit_code == 0 and "removed" in gone.output
    assert not (data_dir() / "characters" / "Luna_card").exists()


@pytest.mark.slow
def test_data_build_defaults_to_the_library_on_a_fresh_install(tmp_path):
    """`haruhi data build -o DIR` from a folder with no ../shared beside it and an empty HARUHI_HOME."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "HARUHI_CHARACTERS"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "haruhi_tui.cli", "data", "build", "-o", str(tmp_path / "d"),
                           "--only", "haruhi", "--only", "李云龙"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    stats = (tmp_path / "d" / "stats.json").read_text(encoding="utf-8")
    assert "春日" in stats and "李云龙" in stats and "the character library" in proc.stdout
    assert (tmp_path / "d" / "haruhi_train.json").stat().st_size > 10_000
