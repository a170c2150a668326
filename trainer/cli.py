"""The ``haruhi train`` command (registered on the main ``haruhi`` app)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach ``train`` to the ``haruhi`` app."""
