
import pytest

from haruhi_tui.core.characters import load_character
from haruhi_tui.core.dataset import BuildOptions, build
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.persona import Turn
from haruhi_tui.core.sharegpt import load_sharegpt
from haruhi_tui.services.export import ChatRecord, export_chat, parse_jsonl, parse_markdown


@pytest.fixture
def chat(characters_dir):
    haruhi = load_character(characters_dir / "haruhi")
    turns = (Turn("user", "今天去哪里？", "阿虚"), Turn("assistant", "去找外星人！\n**马上**出发！", "春日"),
             Turn("user", "又来了……", "阿虚"), Turn("assistant", "少废话，跟上！", "春日"))
    return ChatRecord("周六的活动", haruhi, turns, model="gemma-3-270m")


def test_markdown_and_jsonl_parse_back(chat, tmp_path):
    md = export_chat(chat, tmp_path / "c.md")
    assert parse_markdown(md.read_text()) == list(chat.turns)
    jl = export_chat(chat, tmp_path / "c.jsonl")
    assert parse_jsonl(jl.read_text()) == list(chat.turns)


def test_sharegpt_export_builds_into_a_dataset(chat, tmp_path, characters_dir):
    path = export_chat(chat, tmp_path / "c.json")
    (sample,) = load_sharegpt(path)
    assert sample.system.startswith(chat.character.role_prompt[:20]) and "Classic scenes:" in sample.system
    assert sample.messages[1] == {"role": "user", "content": "阿虚:「今天去哪里？」"}
    assert sample.target == "少废话，跟上！"
    result = build(characters_dir, BuildOptions(), only=["haruhi"], extra=[path])
    assert result.extra_samples == 1 and result.train[-1].target == "少废话，跟上！"


def test_unknown_format_and_empty_chat(chat, tmp_path):
    with pytest.raises(HaruhiError, match="unknown export format"):
        export_chat(chat, tmp_path / "c.txt")
    lonely = ChatRecord("x", chat.character, (Turn("user", "hi", "阿虚"),))
    with pytest.raises(HaruhiError, match="no reply"):
        export_chat(lonely, tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()
