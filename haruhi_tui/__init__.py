"""haruhi-tui: character role-play on gpt-oss-20b in the terminal.

This package holds the app and the shared domain every other part uses: characters, the persona
prompt builder, the harmony format, datasets and the session store.
"""

__version__ = "0.1.0"
