"""Characters from the ChatHaruhi hub datasets, through the real download code against the hub on 127.0.0.1
(tests/support/fake_hub.py serves both datasets in their real layout)."""

from __future__ import annotations

import json
import re
import socket

import pytest

from haruhi_tui.core.characters import load_character
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.paths import data_dir
from haruhi_tui.services.character_hub import (
    catalogue,
    clean_prompt,
    downloads_dir,
    get_characters,
    read_character_rows,
    resolve,
)
from haruhi_tui.services.character_library import CharacterLibrary

CHATHARUHI = "silk-road/ChatHaruhi-RolePlaying"


@pytest.fixture
def library(monkeypatch):
    monkeypatch.delenv("HARUHI_CHARACTERS", raising=False)
    return CharacterLibrary()


def test_the_catalogue_has_chatharuhi_32_and_rolellm_95_and_resolves_names():
    every = catalogue()
    assert [c.collection for c in every].count("chatharuhi") == 32
    assert [c.collection for c in every].count("rolellm") == 95
    assert len({c.folder.casefold() for c in every}) == len(every)  # one folder per character
    luna, sparrow, haruhi = resolve(["luna lovegood", "jack-sparrow", "凉宫春日"])
    assert (luna.stem, luna.repo) == ("Luna", CHATHARUHI)
    assert (sparrow.folder, sparrow.filename) == ("Jack_Sparrow", "Jack Sparrow.jsonl")
    assert sparrow.url.endswith("ChatHaruhi-from-RoleLLM/blob/main/Jack%20Sparrow.jsonl")
    assert haruhi.folder == "haruhi" and haruhi.source().licence == "CC BY-NC 4.0"
    assert sparrow.source().licence == "CC BY 4.0"
    with pytest.raises(HaruhiError, match="no character 'Jack Sparow' on the ChatHaruhi hub.*Jack Sparrow"):
        resolve(["Jack Sparow"])


def test_get_two_characters_with_progress_then_a_second_run_is_a_no_op(hub, library):
    seen: list[tuple[float | None, str]] = []
    result = get_characters(resolve(["Luna", "Jack Sparrow"]), library, progress=lambda f, m: seen.append((f, m)))
    assert [c.folder for c in result.fetched] == ["Luna", "Jack_Sparrow"]

    fractions = [f for f, _ in seen if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and len(fractions) > 4
    assert any("[1/2] Luna Lovegood: downloading" in m for _, m in seen)
    assert any("[2/2] Jack Sparrow: downloading" in m for _, m in seen)

    luna = load_character(data_dir() / "characters" / "Luna")
    assert luna.name == "Luna" and len(luna.scenes) == 16 and luna.first_line.startswith("Scene 0")
    assert "number 15" in luna.scenes[-1].text()  # the enc_text rows decoded
    assert "{{RAG" not in luna.role_prompt and "Classic scenes for the role" not in luna.role_prompt
    manifest = json.loads((data_dir() / "characters" / "Luna" / "character.json").read_text(encoding="utf-8"))
    assert manifest["source"]["kind"] == "chatharuhi" and manifest["source"]["licence"] == "CC BY-NC 4.0"
    assert manifest["source"]["url"] == "https://huggingface.co/datasets/silk-road/ChatHaruhi-RolePlaying/blob/main/Luna.jsonl"
    assert manifest["display_name"] == "Luna Lovegood" and manifest["work"] == "Harry Potter"
    sparrow = load_character(data_dir() / "characters" / "Jack_Sparrow")
    assert sparrow.name == "Jack Sparrow" and sparrow.interlocutor == "Will Turner"
    assert sparrow.manifest.source.kind == "rolellm" and sparrow.manifest.source.licence == "CC BY 4.0"
    assert not list(downloads_dir().rglob("*.jsonl")) and not list(downloads_dir().rglob("*.part"))
    assert [e.key for e in library.entries("downloaded")] == ["Jack_Sparrow", "Luna"]

    hub.requests.clear()
    again = get_characters(resolve(["Luna", "Jack Sparrow", "haruhi"]), library)
    assert not again.fetched and not hub.requests  # nothing asked of the hub
    assert [(c.folder, why) for c, why in again.present] == [
        ("Luna", "already downloaded"), ("Jack_Sparrow", "already downloaded"), ("haruhi", "bundled with haruhi-tui")]


def test_a_cut_off_download_resumes_on_the_next_run(hub, library):
    hub.drop_once.add("Luna.jsonl")  # the connection dies half way once: resumed within the run
    get_characters(resolve(["Luna"]), library)
    ranges = [r[2] for r in hub.requests if r[0] == "GET" and "Luna" in r[1] and r[2]]
    assert len(ranges) == 1 and int(re.fullmatch(r"bytes=(\d+)-", ranges[0])[1]) > 0

    def interrupt(fraction, message):  # Ctrl-C a third of the way into Jack Sparrow
        if fraction is not None and 0.3 < fraction < 0.9 and "downloading" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_characters(resolve(["Jack Sparrow"]), library, progress=interrupt)
    partial = list(downloads_dir().rglob(".Jack Sparrow.jsonl.*.part"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    assert not (data_dir() / "characters" / "Jack_Sparrow").exists()
    have = partial[0].stat().st_size
    hub.requests.clear()
    result = get_characters(resolve(["Jack Sparrow"]), library)
    assert [c.folder for c in result.fetched] == ["Jack_Sparrow"]
    gets = [r[2] for r in hub.requests if r[0] == "GET" and "Jack%20Sparrow" in r[1]]
    assert gets == [f"bytes={have}-"]
    assert len(load_character(data_dir() / "characters" / "Jack_Sparrow").scenes) == 16


def test_a_character_the_hub_lacks_and_offline_are_one_line(hub, library, monkeypatch):
    result = get_characters(resolve(["Doctor Who"]), library)
    assert [c.stem for c in result.missing] == ["Doctor Who"] and not result.fetched
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HaruhiError) as info:
        get_characters(resolve(["Luna"]), library)
    assert "cannot reach the Hugging Face hub: you are offline" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_malformed_hub_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "luotuo_openai": "system_prompt"}\nnot json\n', encoding="utf-8")
    with pytest.raises(HaruhiError, match=r"bad.jsonl, line 2 is not JSON"):
        read_character_rows(bad)
    bad.write_text('{"luotuo_openai": "config"}\n', encoding="utf-8")
    with pytest.raises(HaruhiError, match="a row without 'text'"):
        read_character_rows(bad)
    assert clean_prompt("act like X\nClassic scenes for the role are as follows:\n{{RAG对话}}\n") == "act like X"
