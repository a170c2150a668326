"""The Textual chat app (``haruhi-tui``)."""
