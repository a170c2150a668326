"""What the app hands its screens: the services they work with and the run's options, in one typed object.

Screens take this (or the one service they need) in their constructor; none of them reaches into the App.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from haruhi_tui.core.engine import Sampling
from haruhi_tui.services.character_library import CharacterLibrary
from haruhi_tui.services.model_service import ModelService
from haruhi_tui.store import Store


class Report(Protocol):
    """Show an error as a notification (the app keeps running) and keep it in the run's list of problems."""

    def __call__(self, message: str, timeout: float = 10) -> None: ...


@dataclass
class Services:
    store: Store
    models: ModelService
    library: CharacterLibrary
    report: Report
    sampling: Sampling | None = None  # None: each chat's own settings
    save_interval: float = 0.5  # seconds between saves of a reply while it streams
    store_problem: str = ""  # why chats of this run are not saved ("" when they are)
