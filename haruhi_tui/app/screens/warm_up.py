"""The chat screen's warm-up: while the user types, a worker evaluates the prompt the line would get
(:func:`~haruhi_tui.services.warmup.warm`), then the newest line typed since, until it has caught up.

Typing on stops a prompt being evaluated only when the newest line gets other scenes (otherwise most of it
is still to be had); Enter stops it, as any reply does (:meth:`~haruhi_tui.core.engine.Engine.prefill`).
After a reply whose line told its new scenes beside it, the reply's worker moves them into the system block
while the reply is read (:func:`~haruhi_tui.services.warmup.settle`).
"""

from __future__ import annotations

import threading

from haruhi_tui.core.engine import Engine
from haruhi_tui.services import warmup
from haruhi_tui.services.chat import ChatSession

from .chat_view import ChatView

WARM_DELAY = 0.05  # seconds a warm-up waits for more keys before it evaluates the line being typed
GROUP = "warm"  # the workers' group (waited for on quit)


class DraftWarmUp:
    """The line being typed and the one worker that evaluates it; shared by the UI and that worker."""

    def __init__(self, screen: ChatView) -> None:
        self.screen = screen
        self.draft = ""  # the line being typed ("": nothing to evaluate)
        self.lock = threading.Lock()  # guards draft and warming between the UI and the worker
        self.warming = False
        self.stopped = threading.Event()  # set on quit: the warm-up stops between two chunks

    def typed(self, value: str) -> None:
        """The message box changed (UI thread): start the worker unless it runs already."""
        screen, models = self.screen, self.screen.services.models
        usable = screen.session is not None and not screen.generating and models.ready
        with self.lock:
            self.draft = value.strip() if usable else ""
            start = bool(self.draft) and not self.warming
            self.warming = self.warming or start
        if start:
            session, engine = screen.session, models.engine
            screen.run_worker(lambda: self._run(session, engine), thread=True, group=GROUP, exit_on_error=False)

    def stop(self) -> None:
        self.stopped.set()

    def settle(self, session: ChatSession, engine: Engine) -> None:
        """After a reply, in its worker thread: :func:`~haruhi_tui.services.warmup.settle`."""
        try:
            warmup.settle(session, engine, self.stopped.is_set)
        except Exception:  # noqa: BLE001 - only a head start: the next reply reports what is wrong
            pass

    def _run(self, session: ChatSession, engine: Engine) -> None:
        screen = self.screen
        done = ""
        try:
            while True:
                self.stopped.wait(WARM_DELAY)  # let a burst of keys land
                with self.lock:
                    draft = self.draft
                    if not draft or draft == done or screen.generating or session is not screen.session \
                            or self.stopped.is_set():
                        self.warming = False
                        return
                scenes = warmup.scenes_for(session, engine, draft)
                seen = {draft: scenes}

                def stop() -> bool:
                    newest = self.draft
                    if self.stopped.is_set() or not newest:
                        return True
                    if newest not in seen:
                        seen[newest] = warmup.scenes_for(session, engine, newest)
                    return seen[newest] != scenes

                warmup.warm(session, engine, draft, stop)
                done = draft
        except Exception:  # noqa: BLE001 - only a head start: the reply itself reports what is wrong
            with self.lock:
                self.warming = False
