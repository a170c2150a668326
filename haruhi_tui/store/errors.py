"""The store's one error type: every database failure becomes it, with a message that says what to do."""

from __future__ import annotations

from haruhi_tui.core.errors import HaruhiError


class StoreError(HaruhiError):
    """The sessions database cannot be opened, read or written."""
