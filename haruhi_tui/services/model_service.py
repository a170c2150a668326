"""The models the chat talks with: the one loaded for the chat, and the second one ctrl+k compares it with.

UI-free. :meth:`ModelService.open` blocks (the app runs it in a thread worker); the service is always in one
of three states a screen can show: loading, ready, or failed with a one-line reason. A worker that needs the
model (a reply typed while it loads) blocks in :meth:`ModelService.wait`. The last model loaded is
remembered in the store's preferences, so the next run starts with it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterable

from haruhi_tui.core.engine import DEFAULT_N_CTX, Engine, Sampling, open_gguf
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services.bundled_model import BUNDLED_NAME, default_gguf, is_bundled
from haruhi_tui.services.local_models import LocalModel, list_local_models
from haruhi_tui.store import Store, StoreError

#: The model picker's choice for the bundled Gemma 3 270M (assembled on first use).
BUNDLED = "bundled"
LAST_MODEL_PREF = "last_model"
Progress = Callable[[float | None, str], None]


def choice_name(choice: str) -> str:
    """What a model choice is called while it loads."""
    return BUNDLED_NAME if choice == BUNDLED else Path(choice).name


class ModelService:
    """Loads and holds the chat's engine and the compare engine; says ready, loading or failed."""

    def __init__(self, *, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None, engine: Engine | None = None,
                 models_dirs: Iterable[str | Path] = (), store: Store | None = None) -> None:
        self.n_ctx = n_ctx
        self.n_threads = n_threads  # None: the engine measures which count decodes fastest
        self.models_dirs = [Path(d) for d in models_dirs]
        self.store = store
        self.engine = engine
        self.choice = str(engine.path) if engine else ""
        self.error = ""  # why the last load failed ("" after a success)
        self.loading = False
        self.compare_engine: Engine | None = None  # the second model of a compare; None: the chat's model
        self._settled = threading.Event()  # set whenever no load is in progress and one has ended
        if engine is not None:
            self._settled.set()

    # -- state ------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.engine is not None and not self.loading

    @property
    def demo(self) -> bool:
        """The chat's model is the bundled Gemma 3 270M: a small demo model whose replies often wander."""
        return self.engine is not None and is_bundled(self.engine.path)

    def label(self) -> str:
        if self.loading:
            return "loading model…"
        if self.engine is None:
            return "no model (ctrl+o)"
        return f"{self.engine.name} ({self.engine.style})"

    def path(self) -> str:
        """The loaded model's file ("" without one): what a new chat records as its model."""
        return str(self.engine.path) if self.engine else ""

    def local_models(self) -> list[LocalModel]:
        """GGUF files in the models folders, for the picker (the bundled one is its own entry)."""
        return [m for m in list_local_models(self.models_dirs) if not m.bundled]

    def first_choice(self, requested: str | None = None) -> str:
        """What to load at start: the model asked for, else the last one used if it still exists, else the bundled
        one."""
        if requested:
            return requested
        choice = BUNDLED
        if self.store is not None:
            try:
                choice = self.store.pref(LAST_MODEL_PREF, BUNDLED) or BUNDLED
            except StoreError:
                pass
        return choice if choice == BUNDLED or Path(choice).exists() else BUNDLED

    # -- loading ----------------------------------------------------------------------------------
    def open(self, choice: str, progress: Progress | None = None) -> Engine:
        """Load a GGUF (or assemble and load the bundled one); blocks. Any failure is a :class:`HaruhiError`."""
        try:
            path = default_gguf(progress) if choice == BUNDLED else Path(choice).expanduser()
            return open_gguf(path, n_ctx=self.n_ctx, n_threads=self.n_threads)
        except HaruhiError:
            raise
        except Exception as exc:  # a model must never take the app down
            raise HaruhiError(f"could not load {choice}: {type(exc).__name__}: {exc}") from exc

    def begin(self) -> None:
        """A load of the chat's model starts: workers waiting for it keep waiting."""
        self.loading = True
        self._settled.clear()

    def loaded(self, engine: Engine, choice: str) -> None:
        self.engine, self.choice, self.error = engine, choice, ""
        self.loading = False
        self._settled.set()
        if self.store is not None:
            try:
                self.store.set_pref(LAST_MODEL_PREF, choice)
            except StoreError:
                pass

    def failed(self, error: str) -> None:
        """The load failed: the model loaded before (if any) stays in use."""
        self.loading = False
        self.error = error
        self._settled.set()

    def wait(self, cancel: threading.Event) -> Engine | None:
        """Block a worker until a model is ready; None if loading failed or the turn was stopped first."""
        while True:
            if self.engine is not None and not self.loading:
                return self.engine
            if cancel.is_set() or (not self.loading and self.error):
                return None
            self._settled.wait(0.1)

    # -- compare ----------------------------------------------------------------------------------
    def compare_runs(self, sampling: Sampling | None) -> list[tuple[Engine, Sampling | None, str]]:
        """What ctrl+k compares: the chat's model against the compare model, or (no compare model) the
        chat's model against itself at a warmer temperature."""
        assert self.engine is not None
        engine, other = self.engine, self.compare_engine
        base = sampling or Sampling()
        if other is not None and other is not engine:
            label = other.name + (" (2nd copy)" if other.path == engine.path else "")
            return [(engine, sampling, engine.name), (other, sampling, label)]
        warm = Sampling(temperature=min(1.5, base.temperature + 0.5) or 0.7, top_p=base.top_p, top_k=base.top_k,
                        min_p=base.min_p, repeat_penalty=base.repeat_penalty, max_tokens=base.max_tokens)
        return [(engine, sampling, f"{engine.name} · temp {base.temperature:g}"),
                (engine, warm, f"{engine.name} · temp {warm.temperature:g}")]
