"""Where things live: the app's data folder, characters, models. Environment variables override."""

from __future__ import annotations

import os
from pathlib import Path

#: The development copy of the ChatHaruhi characters, beside the project checkout.
_DEV_CHARACTERS = Path(__file__).resolve().parents[3] / "shared" / "chatharuhi" / "characters"


def data_dir() -> Path:
    """The app's own folder (sessions database, downloads, exports): $HARUHI_HOME or XDG data home."""
    if os.environ.get("HARUHI_HOME"):
        return Path(os.environ["HARUHI_HOME"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "haruhi-tui"


def default_characters_dir() -> Path:
    """$HARUHI_CHARACTERS, else the development data beside a checkout, else <data dir>/characters.

    Imported character cards always go to <data dir>/characters, which the app lists next to this folder,
    so importing a card never hides the configured characters.
    """
    if os.environ.get("HARUHI_CHARACTERS"):
        return Path(os.environ["HARUHI_CHARACTERS"]).expanduser()
    if _DEV_CHARACTERS.is_dir():
        return _DEV_CHARACTERS
    return data_dir() / "characters"


def models_dir() -> Path:
    """Where GGUF models are looked for and downloaded to: $HARUHI_MODELS or <data dir>/models."""
    if os.environ.get("HARUHI_MODELS"):
        return Path(os.environ["HARUHI_MODELS"]).expanduser()
    return data_dir() / "models"
