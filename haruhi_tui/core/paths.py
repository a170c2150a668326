"""Where things live: the app's data folder, characters, models. Environment variables override.

Characters come from three places (:mod:`haruhi_tui.services.character_library` puts them together): the starter
set shipped inside the package, the user's own folder ``<data dir>/characters`` (downloaded and imported
characters) and a folder the user configures (``--characters`` or ``$HARUHI_CHARACTERS``). Nothing is read
from beside the checkout: a development copy of the ChatHaruhi data is used only when named explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The starter characters and their NOTICE, shipped as package data (see pyproject's package-data).
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"


def data_dir() -> Path:
    """The app's own folder (sessions database, downloads, exports): $HARUHI_HOME or XDG data home."""
    if os.environ.get("HARUHI_HOME"):
        return Path(os.environ["HARUHI_HOME"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "haruhi-tui"


def bundled_characters_dir() -> Path:
    """The starter characters that ship with the package (read-only)."""
    return BUNDLED_DIR / "characters"


def bundled_notice() -> Path:
    """The attribution and licence of the shipped character data."""
    return BUNDLED_DIR / "NOTICE"


def user_characters_dir() -> Path:
    """Where downloaded characters and imported cards become character folders: <data dir>/characters."""
    return data_dir() / "characters"


def configured_characters_dir() -> Path | None:
    """The characters folder the user set in $HARUHI_CHARACTERS, if any."""
    value = os.environ.get("HARUHI_CHARACTERS", "").strip()
    return Path(value).expanduser() if value else None


def models_dir() -> Path:
    """Where GGUF models are looked for and downloaded to: $HARUHI_MODELS or <data dir>/models."""
    if os.environ.get("HARUHI_MODELS"):
        return Path(os.environ["HARUHI_MODELS"]).expanduser()
    return data_dir() / "models"
