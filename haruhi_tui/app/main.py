"""Entry point of ``haruhi-tui``."""


def main() -> None:
    raise SystemExit("haruhi-tui: the app is being built")
