"""llama.cpp's OpenMP helper threads are given back when a reply is done, so that the next reply, in another
thread, is not slowed down by a pool that libgomp keeps for a thread that lives on (haruhi_tui.core.openmp)."""

from __future__ import annotations

import os
import threading

import pytest

from haruhi_tui.core.engine import Sampling, open_gguf
from haruhi_tui.core.openmp import _libgomp
from haruhi_tui.services.bundled_model import default_gguf


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_a_thread_that_replied_and_lives_on_keeps_no_openmp_threads():
    engine = open_gguf(default_gguf(), n_ctx=512, n_threads=2)
    if _libgomp() is None:
        pytest.skip("this llama.cpp does not use OpenMP")
    replied, done = threading.Event(), threading.Event()

    def reply() -> None:  # a pooled worker thread: it replies, then lives on
        list(engine.stream("凉宫春日:「今天", Sampling(temperature=0.0, max_tokens=4)))
        replied.set()
        done.wait(30)

    before = os_threads()
    worker = threading.Thread(target=reply)
    worker.start()
    try:
        assert replied.wait(60)
        assert engine.last_stats.threads == 2
        assert os_threads() == before + 1  # the worker itself, not its OpenMP helper
    finally:
        done.set()
        worker.join()
        engine.close()
