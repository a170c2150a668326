"""Sessions storage: SQLite with WAL, a schema version table and ordered upgrades."""

from .roleplay import LoreAttachment, Persona, StoredLorebook
from .schema import SCHEMA_VERSION, UPGRADES, current_version, upgrade
from .sessions import MEMORY, STATUSES, Chat, Message, Pin, Store, StoreError

__all__ = [
    "MEMORY", "SCHEMA_VERSION", "STATUSES", "UPGRADES", "Chat", "LoreAttachment", "Message", "Persona", "Pin",
    "Store", "StoreError", "StoredLorebook", "current_version", "upgrade", "default_db_path",
]


def default_db_path():
    """``<data dir>/sessions.db``."""
    from haruhi_tui.core.paths import data_dir

    return data_dir() / "sessions.db"
