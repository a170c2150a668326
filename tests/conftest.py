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
