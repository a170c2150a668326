"""``python -m haruhi_tui.cli``: the ``haruhi`` command (the launcher starts jobs this way)."""

from . import main

main()
