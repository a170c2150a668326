"""The ``haruhi models`` commands: list local models, prepare the offline default, download from the hub."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach ``models`` to the ``haruhi`` app."""
