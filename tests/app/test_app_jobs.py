"""The launcher panel (F6) on the real app: real tiny CPU training, convert, eval, cancel, re-attach, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_support import make_app, wait_for
from textual.widgets import Input, ProgressBar, Static
from tiny_dataset import write_dataset

from haruhi_tui.app.screens.jobs import JobsScreen

SIZE = (120, 50)



@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    write_dataset(tmp_path / "data" / "train.json")
    write_dataset(tmp_path / "data" / "val.json", copies=2)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fill(screen: JobsScreen, **values: str) -> None:
    for wid, value in values.items():
        widget = screen.query_one("#" + wid.replace("_", "-"))
        widget.value = value


def fill_train(screen: JobsScreen, base: Path, output: str, steps: str) -> None:
    for name, value in (("base", str(base)), ("dataset", "data/train.json"), ("output", output),
                        ("max_length", "256"), ("learning_rate", "5e-3"), ("max_steps", steps), ("batch_size", "2"),
                        ("grad_accum", "1"), ("warmup_ratio", "0")):
        screen.query_one(f"#train-{name}", Input).value = value


async def open_panel(pilot, app) -> JobsScreen:
    await wait_for(pilot, lambda: app.chat_screen.session is not None and app.screen is app.chat_screen,
                   what="the chat")
    await pilot.press("f6")
    await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen), what="the launcher")
    await wait_for(pilot, lambda: app.screen.launcher.available_gpus is not None, what="the GPUs counted")
    await pilot.pause()
    return app.screen


@pytest.mark.slow
async def test_train_watch_convert_chat_and_evaluate_from_the_panel(engine, characters_dir, tiny_gpt_oss, workdir):
    app = make_app(characters_dir, workdir / "s.db", engine, character="haruhi")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_panel(pilot, app)
        fill_train(screen, tiny_gpt_oss, "runs/tiny", "6")
        screen.query_one("#train-gpus", Input).value = "2"
        await pilot.pause()
        assert "this machine has 0 GPUs" in str(screen.query_one("#train-problem", Static).render())
        await pilot.press("ctrl+s")
        assert screen.watched is None and not screen.launcher.jobs()  # refused before start
        screen.query_one("#train-gpus", Input).value = "1"
        await pilot.pause()
        command = str(screen.query_one("#train-command", Static).render())
        assert command.startswith("$ haruhi train --base") and "--max-steps 6" in command
        assert "--output runs/tiny" in command

        await pilot.press("ctrl+s")
        job = screen.watched
        assert job is not None and job.kind == "train"
        await wait_for(pilot, lambda: not job.running, timeout=240, what="training")
        assert job.status == "completed", job.log_tail(20)
        bar = screen.query_one("#watch-progress", ProgressBar)
        assert bar.total == 6 and bar.progress == 6
        assert screen._plotted == (job.id, 6, 6)  # the curve holds every step's loss and learning rate
        assert "6/6 steps" in str(screen.query_one("#watch-stats", Static).render())

        screen.query_one("#watch-convert").press()
        await pilot.pause()
        assert screen.query_one("#convert-adapter", Input).value == str(workdir / "runs" / "tiny" / "adapter")
        fill(screen, convert_out=str(workdir / "tiny.gguf"), convert_type="q8_0")
        await pilot.press("ctrl+s")
        convert = screen.watched
        assert convert.kind == "convert"
        await wait_for(pilot, lambda: not convert.running, timeout=240, what="convert")
        assert convert.status == "completed", convert.log_tail(20)
        assert (workdir / "tiny.gguf").is_file() and convert.state.total and convert.state.done == convert.state.total

        screen.query_one("#tabs").active = "tab-eval"
        fill(screen, eval_model_a=str(tiny_gpt_oss), eval_model_b=str(tiny_gpt_oss),
             eval_adapter_b=str(workdir / "runs" / "tiny" / "adapter"), eval_dataset="data/val.json",
             eval_limit="2", eval_max_new="6")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen.comparison is not None, timeout=300, what="both evals")
        names = list(screen.comparison["runs"])
        assert len(names) == 2 and names[1] == "tiny"
        assert (workdir / "runs" / "eval" / "comparison.md").is_file()
        table = screen.query_one("#eval-results", Static).render()
        assert table is not None and [j.kind for j in screen.launcher.jobs()] == ["eval", "eval", "convert", "train"]

        await pilot.press("ctrl+g")  # chat with the export
        models = app.models
        await wait_for(pilot, lambda: models.engine is not None and Path(models.engine.path) == workdir / "tiny.gguf"
                       and not models.loading, timeout=60, what="the exported model in the chat")
        assert app.screen is app.chat_screen


@pytest.mark.slow
async def test_close_reopen_cancel_and_resume_from_the_panel(engine, characters_dir, tiny_gpt_oss, workdir):
    app = make_app(characters_dir, workdir / "s.db", engine, character="haruhi")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_panel(pilot, app)
        fill_train(screen, tiny_gpt_oss, "runs/long", "300")
        await pilot.press("ctrl+s")
        job = screen.watched
        await wait_for(pilot, lambda: job.state.done >= 1, timeout=240, what="the first step")
    assert job.running  # the app is gone, the job is not

    app = make_app(characters_dir, workdir / "s.db", engine, character="haruhi")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_panel(pilot, app)
        attached = screen.watched
        assert attached is not None and attached.id == job.id and attached.proc is None  # re-attached
        seen = attached.state.done
        await wait_for(pilot, lambda: attached.state.done > seen, timeout=120, what="progress after re-attaching")
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not attached.running, timeout=120, what="the cancel")
        assert attached.status == "cancelled"
        stopped = attached.state.metrics["steps"]
        assert (workdir / "runs" / "long" / f"checkpoint-{stopped}").is_dir()
        assert "cancelled" in str(screen.query_one("#watch-title", Static).render())

        screen.query_one("#watch-resume").press()
        await pilot.pause()
        resumed = screen.watched
        assert resumed.id != attached.id and resumed.row.command[-1] == "--resume"
        await wait_for(pilot, lambda: resumed.state.done > stopped, timeout=240, what="resumed steps")
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not resumed.running, timeout=120, what="the second cancel")
        assert resumed.status == "cancelled"
