"""Shared fixtures: the real ChatHaruhi data beside the checkout, and an isolated app home per test."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_CHARACTERS = ROOT.parent / "shared" / "chatharuhi" / "characters"


@pytest.fixture(scope="session")
def characters_dir() -> Path:
    """The real ChatHaruhi characters (read-only). CI clones the project with ../shared beside it."""
    assert SHARED_CHARACTERS.is_dir(), f"expected the ChatHaruhi data at {SHARED_CHARACTERS}"
    return SHARED_CHARACTERS


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own app data folder, so nothing touches the user's sessions or models."""
    home = tmp_path_factory.mktemp("haruhi_home")
    monkeypatch.setenv("HARUHI_HOME", str(home))
    return home


# -- tiny gpt-oss models and the real harmony tokenizer (tests/tiny_models.py) -----------------------

@pytest.fixture(scope="session")
def harmony_tokenizer_dir(tmp_path_factory) -> Path:
    """A HF tokenizer folder with the real o200k_harmony vocabulary and our harmony chat template."""
    from tiny_models import save_harmony_tokenizer

    return save_harmony_tokenizer(tmp_path_factory.mktemp("harmony_tokenizer"))


@pytest.fixture(scope="session")
def tiny_gpt_oss(tmp_path_factory) -> Path:
    """A tiny random GptOssForCausalLM checkpoint (bf16 safetensors + harmony tokenizer), seed 0. Read-only:
    copy it (tiny_models.copy_checkpoint) before changing anything in it."""
    from tiny_models import build_tiny_gpt_oss

    return build_tiny_gpt_oss(tmp_path_factory.mktemp("tiny_gpt_oss"), seed=0)


@pytest.fixture(scope="session")
def tiny_gpt_oss_mxfp4(tmp_path_factory) -> Path:
    """The same model as ``tiny_gpt_oss`` with its experts stored as MXFP4 blocks/scales, like openai/gpt-oss-20b."""
    from tiny_models import build_tiny_gpt_oss

    return build_tiny_gpt_oss(tmp_path_factory.mktemp("tiny_gpt_oss_mxfp4"), seed=0, mxfp4=True)
