"""Shared fixtures: the real ChatHaruhi data beside the checkout, an isolated app home per test, tiny models,
the bundled model on llama.cpp and a hub on 127.0.0.1. Helpers the tests import live in tests/support/ (on the
path through pyproject's pytest ``pythonpath``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_hub import hub  # noqa: F401  - the hub on 127.0.0.1 fixture (tests/support/fake_hub.py)

ROOT = Path(__file__).resolve().parent.parent
#: The 32 real ChatHaruhi characters the tests read: beside the clone (as CI has them) or where
#: $HARUHI_TEST_CHARACTERS points. The product never reads either.
SHARED_CHARACTERS = Path(os.environ.get("HARUHI_TEST_CHARACTERS")
                         or ROOT.parent / "shared" / "chatharuhi" / "characters")


@pytest.fixture(scope="session")
def characters_dir() -> Path:
    """The real ChatHaruhi characters (read-only). CI clones the project with ../shared beside it."""
    assert SHARED_CHARACTERS.is_dir(), (f"expected the ChatHaruhi characters at {SHARED_CHARACTERS} (put them "
                                        "there or set HARUHI_TEST_CHARACTERS to their folder)")
    return SHARED_CHARACTERS


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own app data folder, so nothing touches the user's sessions or models."""
    home = tmp_path_factory.mktemp("haruhi_home")
    monkeypatch.setenv("HARUHI_HOME", str(home))
    return home


# -- tiny gpt-oss models and the real harmony tokenizer (tests/support/tiny_models.py) -----------------------

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


#: Bump when haruhi_tui.services.gguf_to_hf.gguf_to_hf changes what it writes: the cached checkpoint is keyed by it.
GEMMA_HF_VERSION = "1"


@pytest.fixture(scope="session")
def gemma_hf() -> Path:
    """The bundled Gemma 3 270M GGUF dequantized to an HF checkpoint (float32, tokenizer adds BOS like llama.cpp).

    Built once (about a minute) into ~/.cache/haruhi-tests/ (or $HARUHI_TEST_CACHE) and reused across runs.
    Read-only: copy it before changing anything in it."""
    import os

    from haruhi_tui.services.bundled_model import default_gguf
    from haruhi_tui.services.gguf_to_hf import gguf_to_hf

    cache = Path(os.environ.get("HARUHI_TEST_CACHE") or Path.home() / ".cache" / "haruhi-tests")
    target = cache / f"gemma-3-270m-hf-{GEMMA_HF_VERSION}"
    expected = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    if not all((target / name).is_file() for name in expected):
        try:
            gguf_to_hf(default_gguf(), target, overwrite=True)
        except OSError:
            if not all((target / name).is_file() for name in expected):  # lost a race with another builder
                raise
    return target


# -- the real bundled model on llama.cpp ---------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    """The bundled Gemma 3 270M GGUF on llama.cpp with a 2048-token context, one per test module (a module's
    tests share its KV cache, as one app run would)."""
    from haruhi_tui.core.engine import open_gguf
    from haruhi_tui.services.bundled_model import default_gguf

    return open_gguf(default_gguf(), n_ctx=2048)
