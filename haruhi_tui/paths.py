"""Where things live: the app's data folder, characters, models. Environment variables override."""

from __future__ import annotations

import os
from pathlib import Path

#: The development copy of the ChatHaruhi characters, beside the project checkout.
_DEV_CHARACTERS = Path(__file__).resolve().parent.parent.parent / "shared" / "chatharuhi" / "characters"


def data_dir() -> Path:
    """The app's own folder (sessions database, downloads, exports): $HARUHI_HOME or XDG data home."""
    if os.environ.get("HARUHI_HOME"):
        return Path(os.environ["HARUHI_HOME"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "haruhi-tui"


def default_characters_dir() -> Path:
    """$HARUHI_CHARACTERS, else the app's characters folder if it has any, else the development data."""
    if os.environ.get("HARUHI_CHARACTERS"):
        return Path(os.environ["HARUHI_CHARACTERS"]).expanduser()
    own = data_dir() / "characters"
    if own.is_dir() and any(own.iterdir()):
        return own
    if _DEV_CHARACTERS.is_dir():
        return _DEV_CHARACTERS
    return own


def models_dir() -> Path:
    """Where GGUF models are looked for and downloaded to: $HARUHI_MODELS or <data dir>/models."""
    if os.environ.get("HARUHI_MODELS"):
        return Path(os.environ["HARUHI_MODELS"]).expanduser()
    return data_dir() / "models"
