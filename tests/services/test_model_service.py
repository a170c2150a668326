"""The model service: loading, ready or failed, what a waiting turn gets, the model remembered for next time."""

from __future__ import annotations

import threading

import pytest

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services.model_service import BUNDLED, LAST_MODEL_PREF, ModelService
from haruhi_tui.store import MEMORY, Store


def test_a_failed_load_is_a_message_and_a_waiting_turn_gets_no_model(tmp_path):
    models = ModelService(store=Store(MEMORY))
    assert models.label() == "no model (ctrl+o)" and not models.ready and models.first_choice() == BUNDLED
    models.begin()
    assert models.label() == "loading model…"
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(models.wait(threading.Event())))
    waiter.start()
    with pytest.raises(HaruhiError, match="not found") as caught:
        models.open(str(tmp_path / "missing.gguf"))
    assert waiter.is_alive()  # still loading: the turn keeps waiting
    models.failed(str(caught.value))
    waiter.join(timeout=5)
    assert got == [None] and "missing.gguf" in models.error and models.label() == "no model (ctrl+o)"
    stop = threading.Event()
    stop.set()
    assert models.wait(stop) is None


def test_a_loaded_model_is_remembered_and_compared_with_itself_warmer(engine, tmp_path):
    store = Store(tmp_path / "s.db")
    models = ModelService(store=store)
    got: list = []
    models.begin()
    waiter = threading.Thread(target=lambda: got.append(models.wait(threading.Event())))
    waiter.start()
    models.loaded(engine, str(engine.path))
    waiter.join(timeout=5)
    assert got == [engine] and models.ready and models.path() == str(engine.path)
    assert engine.name in models.label()

    assert ModelService(store=store).first_choice() == str(engine.path)  # the next run starts with it
    assert ModelService(store=store).first_choice("other.gguf") == "other.gguf"  # unless another is asked for
    store.set_pref(LAST_MODEL_PREF, str(tmp_path / "deleted.gguf"))
    assert ModelService(store=store).first_choice() == BUNDLED

    (first, cold, _), (second, warm, label) = models.compare_runs(None)
    assert first is second is engine and cold is None
    assert warm.temperature > 0 and f"temp {warm.temperature:g}" in label
    models.compare_engine = engine  # the same engine as "the other model" is still a temperature compare
    assert [run[0] for run in models.compare_runs(None)] == [engine, engine]
