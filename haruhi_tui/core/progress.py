"""The one progress callback long steps report through (assembling the bundled model, downloads, GGUF -> HF):
``progress(fraction, message)``, the fraction done in 0..1 or None while it cannot be told. The app drives a
progress bar with it, the ``haruhi`` commands a rich bar."""

from __future__ import annotations

from typing import Callable

Progress = Callable[[float | None, str], None]


def report(progress: Progress | None, fraction: float | None, message: str) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(fraction, message)
