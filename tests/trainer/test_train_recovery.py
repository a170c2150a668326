"""``haruhi train`` after things went wrong: a failed start does not block its own retry, paths are stored so a
run resumes from any folder, and a damaged checkpoint is never trusted (the one before it is used, with a
``warning:`` line). Real training steps of the tiny gpt-oss on CPU."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
from tiny_dataset import write_dataset
from typer.testing import CliRunner

from haruhi_tui.cli import app
from haruhi_tui.core.events import read_events
from haruhi_tui.services.jobs import plan_train
from trainer import train_config as tc
from trainer.checkpoint_check import checkpoint_problem, usable_checkpoint
from trainer.run_state import CHECKPOINT_MARKER, checkpoints
from trainer.train_loop import check_output, resume_config

RECIPE = ["--max-length", "256", "--batch-size", "2", "--grad-accum", "1", "--lr", "5e-3", "--warmup-ratio", "0"]


def haruhi_train(*args: str):
    result = CliRunner().invoke(app, ["train", *args])
    assert "Traceback" not in result.output, result.output
    return result


def warnings_of(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("warning:")]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_a_failed_start_a_moved_working_folder_and_damaged_checkpoints(tiny_gpt_oss, tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_dataset(work / "data" / "train.json")
    monkeypatch.chdir(work)
    base = ["--base", str(tiny_gpt_oss), *RECIPE]

    # 1. A typo in --dataset fails before training; it leaves events.jsonl and train_config.toml in runs/r.
    typo = haruhi_train(*base, "--dataset", "data/trian.json", "-o", "runs/r", "--max-steps", "4")
    assert typo.exit_code == 1 and "dataset not found: data/trian.json" in typo.output
    out = work / "runs" / "r"
    assert (out / "events.jsonl").is_file() and (out / tc.CONFIG_FILE).is_file()
    # the corrected command may start afresh there (the app's launcher agrees) ...
    fixed = tc.resolve({}, {"base": str(tiny_gpt_oss), "dataset": "data/train.json", "output": "runs/r"})
    check_output(fixed, resume=False)
    plan_train({"base": str(tiny_gpt_oss), "dataset": "data/train.json", "output": "runs/r"}, cwd=work,
               available_gpus=0)
    # ... or resume with the corrected dataset: there is no checkpoint it must agree with; it says it starts at 0
    first = haruhi_train("--resume", "-o", "runs/r", "--dataset", "data/train.json", "--max-steps", "4",
                         "--save-steps", "2")
    assert first.exit_code == 0, first.output
    assert any("no complete checkpoint" in w and "starting at step 0" in w for w in warnings_of(first))
    assert [step for step, _ in checkpoints(out)] == [2, 4]
    saved = tomllib.loads((out / tc.CONFIG_FILE).read_text(encoding="utf-8"))
    assert saved["data"]["dataset"] == str(work / "data" / "train.json")  # stored absolute
    assert saved["output"]["output"] == str(out) and saved["model"]["base"] == str(tiny_gpt_oss)
    # every file the run wrote is readable like any other (safetensors wrote the adapters 0600)
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))

    # 2. The final checkpoint's adapter is cut short and the adapter is gone; resumed from another folder with
    #    an absolute --output (the dataset was typed relative): checkpoint-2 is used and steps 3-4 trained again.
    truncate(out / "checkpoint-4" / "adapter_model.safetensors")
    (out / "adapter" / "adapter_model.safetensors").unlink()
    (out / "adapter").rename(tmp_path / "old-adapter")
    monkeypatch.chdir(elsewhere)
    second = haruhi_train("--resume", "-o", str(out))
    assert second.exit_code == 0, second.output
    warned = warnings_of(second)
    assert len(warned) == 1 and "checkpoint-4" in warned[0] and "truncated" in warned[0]
    assert "resuming from checkpoint-2" in warned[0]
    starts = [r for r in read_events(out)[0] if r["event"] == "start"]
    assert starts[-1]["resumed_from"] == 2
    assert checkpoint_problem(out / "checkpoint-4") is None  # saved again, whole
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_size == \
        (out / "checkpoint-4" / "adapter_model.safetensors").stat().st_size

    # 3. The newest checkpoint's optimizer state is damaged and the run is extended: the same fallback.
    truncate(out / "checkpoint-4" / "optimizer.pt")
    third = haruhi_train("--resume", "-o", str(out), "--max-steps", "6")
    assert third.exit_code == 0, third.output
    warned = warnings_of(third)
    assert len(warned) == 1 and "optimizer.pt" in warned[0] and "resuming from checkpoint-2" in warned[0]
    starts = [r for r in read_events(out)[0] if r["event"] == "start"]
    assert starts[-1]["resumed_from"] == 2 and [s for s, _ in checkpoints(out)][-1] == 6


def _checkpoint(out: Path, step: int) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / CHECKPOINT_MARKER).write_text("{}", encoding="utf-8")
    return folder


def test_checkpoints_that_are_not_whole_are_skipped_with_a_warning(tmp_path):
    """Files missing or not loadable: each named; none left means no checkpoint, and their markers go."""
    out = tmp_path / "run"
    _checkpoint(out, 2)
    (_checkpoint(out, 4) / "adapter_config.json").write_text("{", encoding="utf-8")
    warnings: list[str] = []
    assert usable_checkpoint(out, warnings.append) is None
    assert len(warnings) == 2 and "checkpoint-4" in warnings[0] and "adapter_config.json" in warnings[0]
    assert "no complete checkpoint is left" in warnings[1] and checkpoints(out) == []


def test_resume_paths_compare_absolute_and_settings_are_free_before_a_checkpoint(tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    write_dataset(work / "data" / "a.json")
    write_dataset(work / "data" / "b.json")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    out = work / "runs" / "r"
    out.mkdir(parents=True)
    tc.save(tc.resolve({}, {"output": "runs/r", "dataset": "data/a.json", "lora_r": 8}), out / tc.CONFIG_FILE)
    # before any checkpoint: a corrected setting is taken as typed
    assert resume_config({}, {"output": "runs/r", "dataset": "data/b.json"}).dataset == "data/b.json"
    _checkpoint(out, 2)
    # the same dataset typed relative is the same dataset; from another folder the saved one is found
    assert resume_config({}, {"output": "runs/r", "dataset": "data/a.json"}).lora_r == 8
    monkeypatch.chdir(elsewhere)
    resumed = resume_config({}, {"output": str(out)})
    assert Path(resumed.dataset) == work / "data" / "a.json" and Path(resumed.dataset).is_file()
    with pytest.raises(Exception, match="different --dataset"):
        resume_config({}, {"output": str(out), "dataset": str(work / "data" / "b.json")})


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "inf"], "finite number"),
    (["--lr", "nan"], "finite number"),
    (["--warmup-ratio", "-inf"], "finite number"),
])
def test_numbers_that_are_not_finite_are_refused(flags, message):
    result = CliRunner().invoke(app, ["train", *flags, "--print-config"])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    """A file where a folder of --output should be: NotADirectoryError traceback before."""
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "-o", str(tmp_path / "afile" / "run"), "--max-steps", "1"])
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: cannot write to")
    assert "Traceback" not in result.output
