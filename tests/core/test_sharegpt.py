"""Broken dataset files are one-line errors naming the file (and line), through every reader: ``haruhi data check``,
``load_sharegpt``, ``load_dataset_info`` and ``read_json``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import read_json
from haruhi_tui.core.sharegpt import load_dataset_info, load_sharegpt, resolve_dataset

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = {"conversations": [{"from": "user", "value": "阿虚:「你好」"},
                           {"from": "assistant", "value": "哼，来得真慢。"}]}


def line(sample=SAMPLE) -> bytes:
    return json.dumps(sample, ensure_ascii=False).encode("utf-8") + b"\n"


def error_of(call) -> str:
    with pytest.raises(HaruhiError) as err:
        call()
    return str(err.value)


def test_jsonl_cut_inside_a_character_names_file_and_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(line() + line()[:-6])  # the second line ends inside the three bytes of 。
    message = error_of(lambda: load_sharegpt(path))
    assert "chat.jsonl, line 2" in message and "cut short" in message


def test_jsonl_with_a_line_in_another_encoding_names_the_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(line() + line() + json.dumps(SAMPLE, ensure_ascii=False).encode("gb18030") + b"\n")
    message = error_of(lambda: load_sharegpt(path))
    assert "chat.jsonl, line 3 is not UTF-8 text" in message


def test_jsonl_line_that_is_not_json_names_the_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(line() + b"\n" + b'{"conversations": [\n')
    assert "chat.jsonl, line 3 is not valid JSON" in error_of(lambda: load_sharegpt(path))


def test_jsonl_keeps_a_line_separator_inside_a_string(tmp_path):
    sample = {"conversations": [{"from": "user", "value": "a\u2028b"}, {"from": "assistant", "value": "c\x1cd"}]}
    path = tmp_path / "chat.jsonl"
    path.write_bytes(line(sample))
    (loaded,) = load_sharegpt(path)
    assert loaded.messages[0]["content"] == "a\u2028b" and loaded.target == "c\x1cd"


def test_json_cut_inside_a_character_says_cut_short_not_encoding(tmp_path):
    path = tmp_path / "val.json"
    data = json.dumps([SAMPLE], ensure_ascii=False).encode("utf-8")
    path.write_bytes(data[: data.index("。".encode()) + 1])
    message = error_of(lambda: load_sharegpt(path))
    assert "val.json" in message and "cut short" in message and "not UTF-8" not in message


def test_json_cut_between_characters_says_cut_short(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps([SAMPLE], ensure_ascii=False)[:40], encoding="utf-8")
    message = error_of(lambda: read_json(path))
    assert "not valid JSON" in message and "cut short" in message


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[" + b"1" * 5000 + b"]", "not usable JSON"),
    (b'\xef\xbb\xbf[{"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}]}]', None),
])
def test_json_edge_cases_are_errors_or_load(tmp_path, content, message):
    path = tmp_path / "d.json"
    path.write_bytes(content)
    if message is None:  # a UTF-8 byte order mark is fine
        assert load_sharegpt(path)[0].target == "a"
    else:
        assert message in error_of(lambda: load_sharegpt(path))


def test_a_folder_or_a_broken_link_in_place_of_a_dataset(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    assert "is a folder" in error_of(lambda: load_sharegpt(tmp_path / "d.jsonl"))
    (tmp_path / "gone.json").symlink_to(tmp_path / "nowhere.json")
    assert "not found" in error_of(lambda: load_sharegpt(tmp_path / "gone.json"))
    assert "cannot read" in error_of(lambda: resolve_dataset(str(tmp_path / ("x" * 300) / "d.json")))


@pytest.mark.parametrize("entry, message", [
    ("haruhi_val.json", "must be a JSON object"),
    (["haruhi_val.json"], "must be a JSON object"),
    ({"file_name": 3, "formatting": "sharegpt"}, "file_name must be a file name"),
    ({"file_name": "v.json", "formatting": "sharegpt", "columns": ["conversations"]}, "'columns' must be an object"),
    ({"file_name": "v.json", "formatting": "sharegpt", "tags": {"role_tag": ["from"]}}, "'tags' must be an object"),
])
def test_bad_dataset_info_entries_are_one_line_errors(tmp_path, entry, message):
    (tmp_path / "v.json").write_text(json.dumps([SAMPLE]), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"haruhi_val": entry}), encoding="utf-8")
    text = error_of(lambda: load_dataset_info(tmp_path, "haruhi_val"))
    assert message in text and "dataset_info.json" in text and "haruhi_val" in text


def check(spec: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "haruhi_tui.cli", "data", "check", spec], capture_output=True,
                          text=True, cwd=ROOT, env=env)


def test_haruhi_data_check_reports_broken_files_in_one_line(tmp_path):
    (tmp_path / "cut.jsonl").write_bytes(line() + line()[:-6])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"haruhi_val": "cut.jsonl"}), encoding="utf-8")
    for spec, expected in ((tmp_path / "cut.jsonl", "cut.jsonl, line 2"), (f"{tmp_path}:haruhi_val", "JSON object")):
        proc = check(str(spec))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr
