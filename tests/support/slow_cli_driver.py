"""Run ``haruhi ARGS`` in this process with the token loop slowed to a crawl (a slow machine), so a test can
press Ctrl-C (SIGINT) mid-reply. Usage: python tests/support/slow_cli_driver.py ARGS..."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout

from haruhi_tui.cli import main  # noqa: E402
from haruhi_tui.core.engine import Engine  # noqa: E402

_real_is_eog = Engine.is_end_of_generation


def _slow_is_eog(self, token: int) -> bool:
    time.sleep(0.15)
    return _real_is_eog(self, token)


if __name__ == "__main__":
    Engine.is_end_of_generation = _slow_is_eog
    sys.argv = ["haruhi", *sys.argv[1:]]
    main()
