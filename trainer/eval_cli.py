"""The ``haruhi eval`` commands (registered on the main ``haruhi`` app)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach ``eval`` to the ``haruhi`` app."""
