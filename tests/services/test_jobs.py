"""The launcher engine (haruhi_tui.services.jobs) without UI: forms to command lines, refusals, and real tiny training
jobs started, followed, cancelled, re-attached from a second store connection, and resumed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tiny_dataset import write_dataset

from haruhi_tui.services.jobs import JobError, Launcher, plan_train, train_fields
from haruhi_tui.store import SCHEMA_VERSION, Store
from haruhi_tui.store.jobs import JobTable


def tiny_form(base: Path, output: str, **values) -> dict:
    form = {"base": str(base), "dataset": "data/train.json", "output": output, "max_length": "256",
            "batch_size": "2", "grad_accum": "1", "learning_rate": "5e-3", "warmup_ratio": "0", "max_steps": "6",
            "save_steps": "100"}
    form.update(values)
    return form


def wait(launcher: Launcher, job, predicate, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while not predicate(job):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; job {job.status}; log: {job.log_tail(10)}")
        launcher.poll(job)
        time.sleep(0.2)


@pytest.fixture()
def workdir(tmp_path) -> Path:
    write_dataset(tmp_path / "data" / "train.json")
    return tmp_path


def test_the_form_becomes_a_command_line_and_bad_values_are_refused(workdir):
    names = [f.name for f in train_fields()]
    assert names[:9] == ["base", "dataset", "lora_r", "lora_alpha", "learning_rate", "epochs", "max_length", "gpus",
                         "output"]
    assert "lr_scheduler" in names and "save_steps" in names  # the advanced section holds the rest

    plan = plan_train({"dataset": "data/train.json", "lora_r": "8", "output": "runs/a"}, cwd=workdir, available_gpus=0)
    assert plan.argv == ["haruhi", "train", "--dataset", "data/train.json", "--lora-r", "8", "--output", "runs/a"]
    assert plan.display == "haruhi train --dataset data/train.json --lora-r 8 --output runs/a"
    assert plan.output == (workdir / "runs" / "a").resolve()
    plan = plan_train({"dataset": "data/train.json", "gradient_checkpointing": "false", "gpus": "4"}, cwd=workdir,
                      available_gpus=8)
    assert "--no-gradient-checkpointing" in plan.argv and plan.argv[-2:] == ["--gpus", "4"]

    refusals = [
        ({"dataset": "data/train.json", "gpus": "2"}, "this machine has 0 GPUs"),
        ({"dataset": "data/train.json", "learning_rate": "fast"}, "learning_rate: expected a number"),
        ({"dataset": "data/train.json", "learning_rate": "-1"}, "--lr must be positive"),
        ({"dataset": "data/train.json", "lora_r": "0"}, "--lora-r must be at least 1"),
        ({"dataset": "data/train.json", "packing": "tight"}, "--packing must be one of"),
        ({"dataset": "data/missing.json"}, "dataset not found"),
        ({"dataset": "data/train.json", "colour": "red"}, "unknown setting"),
    ]
    for form, reason in refusals:
        with pytest.raises(JobError, match=reason):
            plan_train(form, cwd=workdir, available_gpus=0)


@pytest.mark.slow
def test_train_job_runs_watch_cancel_reattach_and_resume(tiny_gpt_oss, workdir, tmp_path):
    db = tmp_path / "s.db"
    store = Store(db)
    assert store.version == SCHEMA_VERSION
    launcher = Launcher(store, cwd=workdir, available_gpus=0)

    # 1. a short run to the end: progress, a loss curve, metrics and the adapter in the history row
    job = launcher.start_train(tiny_form(tiny_gpt_oss, "runs/short"))
    with pytest.raises(JobError, match="in use by running job"):
        launcher.start("train", ["haruhi", "train", "--output", "runs/short"], workdir / "runs" / "short")
    wait(launcher, job, lambda j: not j.running)
    assert job.status == "completed", job.log_tail(20)
    assert job.state.done == job.state.total == 6 and len(job.state.losses) == 6
    row = JobTable(store).get(job.id)
    assert row.status == "completed" and row.metrics["steps"] == 6 and row.ended_at
    assert Path(row.outputs["adapter"]).is_dir() and launcher.adapter_of(job) == Path(row.outputs["adapter"])
    assert (workdir / "runs" / "short" / "launcher.log").read_text().startswith("\n$ haruhi train")
    with pytest.raises(JobError, match="already holds a training run"):
        launcher.start_train(tiny_form(tiny_gpt_oss, "runs/short"))

    # 2. a long run, cancelled after its first steps: checkpoint saved, status cancelled
    job = launcher.start_train(tiny_form(tiny_gpt_oss, "runs/long", max_steps="200", save_steps="100"))
    wait(launcher, job, lambda j: j.state.done >= 1)
    # a second app (another store connection) re-attaches from the row, the events and the pid
    other = Launcher(Store(db), cwd=workdir, available_gpus=0)
    seen = other.job(job.id)
    assert seen.running and seen.proc is None and seen.state.total == 200 and seen.state.losses
    other.cancel(seen)
    wait(other, seen, lambda j: not j.running)
    assert seen.status == "cancelled", seen.log_tail(20)
    stopped = seen.state.metrics["steps"]
    assert 1 <= stopped < 200 and (workdir / "runs" / "long" / f"checkpoint-{stopped}").is_dir()
    launcher.poll(job)
    assert job.status == "cancelled"

    # 3. resume: the same command with --resume, continuing the count and the curve
    resumed = launcher.resume(job)
    assert resumed.row.command[-1] == "--resume" and resumed.id != job.id
    wait(launcher, resumed, lambda j: j.state.done > stopped + 1)
    assert [s for s, _ in resumed.state.losses] == list(range(1, resumed.state.done + 1))
    launcher.cancel(resumed)
    wait(launcher, resumed, lambda j: not j.running)
    assert resumed.status == "cancelled"
    assert [j.status for j in launcher.jobs()] == ["cancelled", "cancelled", "completed"]


@pytest.mark.slow
def test_a_crashing_job_fails_with_its_error_and_log(workdir, tmp_path):
    launcher = Launcher(Store(tmp_path / "s.db"), cwd=workdir, available_gpus=0)
    job = launcher.start_train({"base": str(tmp_path / "no-such-model"), "dataset": "data/train.json",
                                "output": "runs/broken", "max_steps": "2"})
    wait(launcher, job, lambda j: not j.running, timeout=120)
    assert job.status == "failed"
    assert "no-such-model" in job.row.error and job.log_tail(5)


@pytest.mark.parametrize("recorded", ["another start time", "another command", "an old row started before it"])
def test_a_pid_given_to_another_process_is_never_signalled_and_the_job_counts_as_ended(tmp_path, recorded):
    """A job's pid, reused by an unrelated process after the job ended (a reboot, a long time): cancel used to
    SIGINT that process's whole group because it was alive."""
    import os
    import subprocess

    from haruhi_tui.core.processes import start_time

    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        store = Store(tmp_path / "s.db")
        began = start_time(stranger.pid)
        assert began is not None
        command, config, started_at = ["haruhi", "train", "--output", "runs/a"], {"pid_started": began}, None
        if recorded == "another start time":
            command, config = ["sleep", "60"], {"pid_started": began - 3600}
        elif recorded == "an old row started before it":
            config, command, started_at = {}, ["sleep", "60"], began - 3600
        row = JobTable(store).add("train", str(tmp_path / "runs" / "a"), command=command, config=config,
                                  pid=stranger.pid)
        if started_at is not None:
            JobTable(store).update(row.id, started_at=started_at)
        launcher = Launcher(store, cwd=tmp_path, available_gpus=0)
        job = launcher.job(row.id)
        assert not job.running  # re-attaching already sees the job has ended
        assert job.status == "failed" and "without finishing" in job.row.error
        with pytest.raises(JobError, match="not running"):
            launcher.cancel(job)
        assert stranger.poll() is None and os.getpgid(stranger.pid) == stranger.pid  # untouched
    finally:
        stranger.kill()
        stranger.wait()


def test_a_job_whose_process_is_ours_still_counts_as_running(tmp_path):
    """The control: the recorded start time and command of a live process match, so it is the job."""
    import subprocess

    from haruhi_tui.core.processes import start_time

    ours = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        store = Store(tmp_path / "s.db")
        row = JobTable(store).add("eval", str(tmp_path / "out"), command=["sleep", "60"],
                                  config={"pid_started": start_time(ours.pid)}, pid=ours.pid)
        launcher = Launcher(store, cwd=tmp_path, available_gpus=0)
        job = launcher.job(row.id)
        assert job.running
        launcher.cancel(job)
        assert ours.wait(timeout=10) != 0  # SIGINT reached it
    finally:
        if ours.poll() is None:
            ours.kill()
            ours.wait()
