"""The dataset build's four files are replaced as a set: Ctrl-C or an error at any point leaves the old set or
the new one, never a mix; the files get ordinary permissions."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from interrupt import ctrl_c_at
from tiny_characters import make_characters

from haruhi_tui.core.dataset import BuildOptions, build, write
from haruhi_tui.core.errors import HaruhiError

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("haruhi_train.json", "haruhi_val.json", "dataset_info.json", "stats.json")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in NAMES}


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """Two different builds of a small character, and the bytes each writes."""
    chars = make_characters(tmp_path_factory.mktemp("chars"))
    old = build(chars, BuildOptions(seed=1, val_fraction=0.3))
    new = build(chars, BuildOptions(seed=2, val_fraction=0.5))
    sets = []
    for result in (old, new):
        out = tmp_path_factory.mktemp("ref")
        write(result, out)
        sets.append(snapshot(out))
    assert sets[0] != sets[1] and all(sets[0][n] != sets[1][n] for n in ("haruhi_train.json", "stats.json"))
    return chars, old, new, sets[0], sets[1]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in NAMES)


@pytest.mark.parametrize("point, expect", [
    ("open:haruhi_train.json", "old"),
    ("write:haruhi_train.json", "old"),
    ("open:haruhi_val.json", "old"),
    ("write:haruhi_val.json", "old"),
    ("open:dataset_info.json", "old"),
    ("open:stats.json", "old"),
    ("commit:1", "new"),  # Ctrl-C while the finished files are renamed in: held back until the set is in place
    ("commit:2", "new"),
    ("commit:4", "new"),
])
def test_ctrl_c_at_any_point_leaves_the_old_set_or_the_new_one(two_builds, tmp_path, point, expect):
    _, old, new, old_bytes, new_bytes = two_builds
    write(old, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_at(point):
            write(new, tmp_path)
    assert snapshot(tmp_path) == (old_bytes if expect == "old" else new_bytes)
    assert leftovers(tmp_path) == []  # the staging folder is gone


def test_ctrl_c_on_a_first_build_leaves_no_files(two_builds, tmp_path):
    _, _, new, _, _ = two_builds
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_at("open:stats.json"):
            write(new, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_folder_in_place_of_an_output_file_replaces_nothing(two_builds, tmp_path):
    _, old, new, old_bytes, _ = two_builds
    write(old, tmp_path)
    (tmp_path / "haruhi_val.json").unlink()
    (tmp_path / "haruhi_val.json").mkdir()
    with pytest.raises(HaruhiError, match=r"haruhi_val.json is a folder.*nothing was replaced"):
        write(new, tmp_path)
    assert (tmp_path / "haruhi_train.json").read_bytes() == old_bytes["haruhi_train.json"]
    assert (tmp_path / "stats.json").read_bytes() == old_bytes["stats.json"]
    assert (tmp_path / "haruhi_val.json").is_dir() and leftovers(tmp_path) == []


def test_other_files_in_the_output_folder_are_kept(two_builds, tmp_path):
    _, old, new, _, new_bytes = two_builds
    (tmp_path / "chat.json").write_text("[]")
    write(old, tmp_path)
    write(new, tmp_path)
    assert snapshot(tmp_path) == new_bytes and leftovers(tmp_path) == ["chat.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_files_get_ordinary_permissions(two_builds, tmp_path, umask, mode):
    _, old, _, _, _ = two_builds
    previous = os.umask(umask)
    try:
        write(old, tmp_path)
    finally:
        os.umask(previous)
    assert {name: (tmp_path / name).stat().st_mode & 0o777 for name in NAMES} == dict.fromkeys(NAMES, mode)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("point, expect", [("write:haruhi_val.json", "old"), ("commit:3", "new")])
def test_haruhi_data_build_interrupted_by_ctrl_c(two_builds, tmp_path, point, expect):
    """The command itself: a real SIGINT while val is written (or while the set is renamed in)."""
    chars, old, _, old_bytes, _ = two_builds
    out, ref = tmp_path / "out", tmp_path / "ref"
    build_args = ["data", "build", "-c", str(chars), "--seed", "2", "--val-fraction", "0.5"]
    assert _cli("-m", "haruhi_tui.cli", *build_args, "-o", str(ref)).returncode == 0
    write(old, out)
    proc = _cli(str(ROOT / "tests" / "support" / "interrupt.py"), point, "--", *build_args, "-o", str(out))
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "error: interrupted (Ctrl-C); nothing half-written was left behind"
    assert snapshot(out) == (old_bytes if expect == "old" else snapshot(ref))
    assert leftovers(out) == []


def test_haruhi_data_build_with_a_folder_in_place_of_val_is_one_line(two_builds, tmp_path):
    chars, old, _, old_bytes, _ = two_builds
    write(old, tmp_path)
    (tmp_path / "haruhi_val.json").unlink()
    (tmp_path / "haruhi_val.json").mkdir()
    proc = _cli("-m", "haruhi_tui.cli", "data", "build", "-c", str(chars), "-o", str(tmp_path), "--seed", "2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "haruhi_val.json is a folder" in proc.stderr
    assert (tmp_path / "haruhi_train.json").read_bytes() == old_bytes["haruhi_train.json"]
