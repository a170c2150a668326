"""A real Ctrl-C at a chosen point of writing files (see :func:`_hook` for the points).

Used in-process by tests/core/test_dataset_write.py and, as ``python interrupt.py POINT -- ARGS``, to run
the ``haruhi`` command in a subprocess that is interrupted there. The signal is raised for real
(``signal.raise_signal``), so whatever handler the code under test has installed decides what happens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator


def _hook(point: str) -> Callable:
    """A profile hook that raises SIGINT once, at ``point``:

    ``open:NAME``   when the file NAME starts to be written (``atomic_open`` is entered for it);
    ``write:NAME``  in the middle of writing it (its 20th ``write`` call);
    ``commit:K``    at the K-th rename that puts a finished file in place (``os.replace`` inside ``_commit``).
    """
    kind, _, arg = point.partition(":")
    state = {"count": 0, "done": False, "committing": False, "writing": False}

    def fire() -> None:
        state["done"] = True
        signal.raise_signal(signal.SIGINT)

    def hook(frame, event, func):
        if state["done"]:
            return
        if event == "call" and frame.f_code.co_name == "_commit":
            state["committing"] = True
        elif event == "call" and frame.f_code.co_name == "atomic_open":
            state["writing"] = str(frame.f_locals.get("path", "")).endswith(arg)
            if kind == "open" and state["writing"]:
                fire()
        elif kind == "write" and event == "c_call" and getattr(func, "__name__", "") == "write" and state["writing"]:
            state["count"] += 1
            if state["count"] == 20:
                fire()
        elif kind == "commit" and event == "c_call" and func is os.replace and state["committing"]:
            state["count"] += 1
            if state["count"] == int(arg):
                fire()

    if kind not in ("open", "write", "commit"):
        raise ValueError(f"unknown interruption point {point!r}")
    return hook


@contextlib.contextmanager
def ctrl_c_at(point: str) -> Iterator[None]:
    """Run the block with a real SIGINT raised at ``point`` (see :func:`_hook`)."""
    sys.setprofile(_hook(point))
    try:
        yield
    finally:
        sys.setprofile(None)


if __name__ == "__main__":
    point, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: interrupt.py POINT -- HARUHI_ARGS"
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout
    from haruhi_tui.cli import app

    with ctrl_c_at(point):
        app(args, prog_name="haruhi")
