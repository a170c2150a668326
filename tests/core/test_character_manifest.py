"""character.json: optional facts a character folder carries (name, source, greetings, user persona)."""

from __future__ import annotations

import shutil

import pytest

from haruhi_tui.core.character_manifest import CharacterManifest, DepthPrompt, Source, read_manifest, write_manifest
from haruhi_tui.core.characters import load_character
from haruhi_tui.core.errors import HaruhiError


def test_a_folder_without_a_manifest_reads_as_before(characters_dir):
    haruhi = load_character(characters_dir / "haruhi")
    assert haruhi.manifest == CharacterManifest()
    assert haruhi.name == "春日" and haruhi.interlocutor == "阿虚"


def test_the_manifest_names_the_speaker_the_user_and_the_work(characters_dir, tmp_path):
    folder = tmp_path / "haruhi"
    shutil.copytree(characters_dir / "haruhi", folder)
    manifest = CharacterManifest(name="凉宫春日", work="凉宫春日的忧郁", user_name="阿虚君",
                                 source=Source("chatharuhi", "https://example.org", "CC BY-NC 4.0", "ChatHaruhi"),
                                 greetings=("SOS团集合！",), depth_prompt=DepthPrompt("保持春日的语气", 2))
    write_manifest(folder, manifest)
    assert read_manifest(folder) == manifest
    haruhi = load_character(folder)
    assert haruhi.name == "凉宫春日" and haruhi.interlocutor == "阿虚君" and haruhi.source_work == "凉宫春日的忧郁"
    assert load_character(folder, speaker="春日").name == "春日"  # an explicit --speaker still wins
    assert (folder / "character.json").stat().st_size < 400  # only the fields that are set are written


@pytest.mark.parametrize("text, problem", [
    ("[1, 2]", "expected a JSON object"),
    ('{"greetings": "hi"}', "'greetings' must be a list of texts"),
    ('{"source": "ChatHaruhi"}', "'source' must be an object"),
    ('{"depth_prompt": {"depth": -1}}', "whole number"),
    ('{"name": ', "not valid JSON"),
])
def test_a_bad_manifest_is_a_one_line_error(tmp_path, text, problem):
    (tmp_path / "character.json").write_text(text, encoding="utf-8")
    with pytest.raises(HaruhiError, match=problem):
        read_manifest(tmp_path)
