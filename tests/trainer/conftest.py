"""Fixtures for the trainer and evaluation tests: a small real haruhi_val (three characters, short prompts)."""

from __future__ import annotations

from pathlib import Path

import pytest

EVAL_CHARACTERS = ["Luna", "jiumozhi", "haruhi"]


@pytest.fixture(scope="session")
def small_val_path(characters_dir, tmp_path_factory) -> Path:
    """haruhi_val.json of three real characters: role prompt and history, without retrieved scenes, so CPU
    runs stay quick."""
    from haruhi_tui.core.dataset import BuildOptions, build, write
    from haruhi_tui.core.persona import PromptBudget

    result = build(characters_dir, BuildOptions(max_turns=4, budget=PromptBudget(scenes=0, max_scenes=0)),
                   only=EVAL_CHARACTERS)
    paths = write(result, tmp_path_factory.mktemp("eval_data"))
    return paths["haruhi_val"]


@pytest.fixture(scope="session")
def small_val(small_val_path):
    from haruhi_tui.core.sharegpt import load_sharegpt

    return load_sharegpt(small_val_path)
