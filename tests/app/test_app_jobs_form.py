"""The launcher's forms as a first-time user meets them in an 80x24 terminal: settings named in words, on/off
settings as switches, Start always in view, PageDown scrolling the form, a missing training set said and
built on request, a watched job showing only what fits its kind, and the history's full metrics."""

from __future__ import annotations

import time

import pytest
from app_support import make_app, screen_text, wait_for
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Select, Switch
from tiny_characters import make_characters

from haruhi_tui.app.screens.jobs import JobsScreen
from haruhi_tui.store.jobs import JobTable

SIZE = (80, 24)


@pytest.mark.slow
async def test_the_train_form_reads_well_and_builds_its_missing_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh install: no data/ folder
    characters = make_characters(tmp_path / "characters")
    app = make_app(characters, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf", character="xiaoming")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.chat_screen.session is not None, what="the chat")
        await pilot.press("f6")
        await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen), what="the launcher")
        await pilot.pause()
        screen = app.screen
        shown = screen_text(app)  # at once, while the GPUs are counted in the background (torch takes seconds)
        assert "LoRA rank" in shown and "lora_r" not in shown
        assert "Start training" in shown  # not below the fold
        assert "data/haruhi_train.json does not exist yet" in " ".join(shown.split())
        assert "Build the training set now" in shown

        assert screen.query_one("#train-load_in_4bit", Switch).value is False  # on/off: a switch
        screen.query_one("#train-gradient_checkpointing", Select).value = "off"  # auto/on/off: a list
        await pilot.pause()
        form = screen.query_one("#train-form", VerticalScroll)
        await pilot.press("pagedown")
        await pilot.pause()
        assert form.scroll_y > 0

        screen.query_one("#dataset-build").press()
        await wait_for(pilot, lambda: (tmp_path / "data" / "haruhi_train.json").is_file()
                       and not screen.query_one("#train-dataset-check").display
                       and screen.launcher.available_gpus is not None, timeout=400, what="the build")
        await pilot.pause()
        assert "dataset not found" not in str(screen.query_one("#train-problem").render())
        assert "--no-gradient-checkpointing" in str(screen.query_one("#train-command").render())


@pytest.mark.slow
async def test_a_watched_job_shows_what_fits_its_kind_and_history_keeps_every_metric(characters_dir, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf", character="haruhi")
    table = JobTable(app.store)
    metrics = {"predict_bleu-4": 7.46, "predict_rouge-1": 19.16, "predict_rouge-2": 6.92, "predict_rouge-l": 13.82,
               "predict_samples_per_second": 28.7}
    row = table.add("eval", str(tmp_path / "runs" / "eval" / "base"), title="eval base",
                    command=["haruhi", "eval", "--model", "base.gguf"])
    table.update(row.id, status="completed", metrics=metrics, ended_at=time.time())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.chat_screen.session is not None, what="the chat")
        await pilot.press("f6")
        await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen), what="the launcher")
        screen = app.screen
        screen.watch(screen.launcher.job(row.id))
        await pilot.pause()
        for wid in ("#watch-loss", "#watch-resume", "#watch-convert", "#watch-cancel", "#watch-chat"):
            assert not screen.query_one(wid).display, wid

        screen.query_one("#tabs").active = "tab-history"
        await pilot.pause()
        history = screen.query_one("#history", DataTable)
        history.focus()
        history.move_cursor(row=0)
        await pilot.pause()
        detail = " ".join(str(screen.query_one("#history-detail").render()).split())
        for key in metrics:
            assert key in detail, key
