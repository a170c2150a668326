"""Entry point of ``haruhi-convert``."""


def main() -> None:
    raise SystemExit("haruhi-convert: being built")
