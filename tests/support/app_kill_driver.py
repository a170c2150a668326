"""Run the real app in this process, start a reply, and keep generating until killed (test_app_sessions).

The token loop is slowed to a crawl (a slow machine), so the parent can kill -9 us mid-reply.
Usage: python tests/support/app_kill_driver.py CHARACTERS_DIR DB_PATH
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout

from app_support import GREEDY, SIZE, make_app, send, wait_for  # noqa: E402

from haruhi_tui.core.engine import Engine, Sampling  # noqa: E402

_real_is_eog = Engine.is_end_of_generation


def _slow_is_eog(self, token: int) -> bool:
    time.sleep(0.15)
    return _real_is_eog(self, token)


async def main(characters: Path, db: Path) -> None:
    Engine.is_end_of_generation = _slow_is_eog
    sampling = Sampling(temperature=0.0, max_tokens=400, repeat_penalty=GREEDY.repeat_penalty)
    app = make_app(characters, db, None, character="haruhi", sampling=sampling, save_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.chat_screen.session is not None and app.models.engine is not None,
                       what="ready")
        await send(pilot, app, "给我讲讲SOS团的故事吧", wait=False)
        print("SENT", flush=True)
        while True:
            await pilot.pause(0.1)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
