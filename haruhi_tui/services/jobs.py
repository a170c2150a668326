"""The launcher's engine, free of UI: build command lines from forms, start jobs, follow them, stop them.

A job is a separate process (its own session, so it survives the app and Ctrl-C in the app's terminal
never reaches it) that writes ``events.jsonl`` into its output folder (:mod:`haruhi_tui.core.events`) and its
stdout/stderr to ``launcher.log`` beside it. The ``jobs`` table remembers the command, the folder and
the pid, so an app opened later re-attaches: it replays the events and checks whether the pid lives.
Cancel sends SIGINT to the process group, exactly like Ctrl-C in a terminal (the trainer saves a
checkpoint and ends ``cancelled``); Resume runs the same command with ``--resume``. A pid is trusted only
while the process behind it started when the job did and runs the job's command (:func:`job_alive`): after a
reboot or a long time the number may belong to another process, which is never signalled.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.events import EVENTS_FILE, JobState, read_events
from haruhi_tui.core.paths import models_dir
from haruhi_tui.core.processes import START_TOLERANCE, same_process, start_time
from haruhi_tui.core.train_folder import run_traces
from haruhi_tui.services.eval_compare import Comparisons
from haruhi_tui.store import Store
from haruhi_tui.store.jobs import JobRow, JobTable

LOG_FILE = "launcher.log"
#: The training settings people change; the rest sit in the form's "advanced" section.
TRAIN_BASIC = ("base", "dataset", "lora_r", "lora_alpha", "learning_rate", "epochs", "max_length", "output")
CONVERT_TYPES = ("auto", "q8_0", "mxfp4", "q4_k_m", "bf16", "f16", "f32")
#: argv prefix of each tool when run from this Python, and how a user would type it.
_TOOLS = {"haruhi": ["-m", "haruhi_tui.cli"], "haruhi-convert": ["-m", "convert.cli"]}


class JobError(HaruhiError):
    """A job cannot be started (bad form value, folder in use, too many GPUs): the message says why."""


@dataclass
class FormField:
    """One setting of the training form: its name, default (typed), help line and choices."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    basic: bool = False


def gpu_count() -> int:
    """GPUs this machine can train on (0 without CUDA)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


def train_fields() -> list[FormField]:
    """The form, from the trainer's one table of settings (so the form, the flags and the TOML agree)."""
    from trainer import train_config as tc

    out = []
    for f in tc.settings():
        default = getattr(tc.TrainConfig(), f.name)
        if isinstance(default, list):
            default = ",".join(default)
        out.append(FormField(f.name, default, f.metadata["help"], f.metadata.get("choices"), f.name in TRAIN_BASIC))
    basic = sorted((f for f in out if f.basic), key=lambda f: TRAIN_BASIC.index(f.name))
    gpus = FormField("gpus", 1, "Processes on this machine: 1 = one process (CPU or one GPU); N = N GPUs (torchrun).",
                     basic=True)
    return [*basic[:-1], gpus, basic[-1], *(f for f in out if not f.basic)]


def _typed(name: str, value: Any, default: Any) -> Any:
    """A form value (often text from an input box) as the setting's type; a wrong one is refused by name."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise JobError(f"{name}: expected true or false, not {value!r}")
    if isinstance(default, int):
        try:
            return int(str(value).strip())
        except ValueError:
            raise JobError(f"{name}: expected a whole number, not {value!r}") from None
    if isinstance(default, float):
        try:
            return float(str(value).strip())
        except ValueError:
            raise JobError(f"{name}: expected a number, not {value!r}") from None
    return str(value).strip()


@dataclass
class TrainPlan:
    """A validated training form: the resolved config, the process count and the command line."""

    config: Any  # trainer.train_config.TrainConfig
    gpus: int
    argv: list[str]
    output: Path
    form: dict[str, Any] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return display_command(self.argv)


def plan_train(form: dict[str, Any], *, cwd: str | os.PathLike | None = None, available_gpus: int | None = None,
               resume: bool = False) -> TrainPlan:
    """Check a training form and build its command line (flags only for settings that differ from the defaults)."""
    from trainer import train_config as tc

    known = {f.name: f for f in train_fields()}
    unknown = sorted(set(form) - set(known))
    if unknown:
        raise JobError(f"unknown setting {unknown[0]!r}")
    values = {name: _typed(name, form[name], known[name].default) for name in form}
    gpus = values.pop("gpus", 1)
    if gpus < 1:
        raise JobError(f"gpus must be at least 1, not {gpus}")
    have = gpu_count() if available_gpus is None else available_gpus
    if gpus > max(1, have):
        raise JobError(f"gpus {gpus}: this machine has {have} GPU{'s' if have != 1 else ''} "
                       f"(1 means one process on the CPU or one GPU)")
    try:
        config = tc.resolve({}, values)
    except HaruhiError as exc:
        raise JobError(str(exc)) from None
    base_dir = Path(cwd) if cwd else Path.cwd()
    output = (base_dir / config.output).resolve()
    if not resume:
        traces = run_traces(output)  # what a run that stopped before its first step left does not count
        if traces:
            raise JobError(f"{config.output} already holds a training run ({', '.join(traces[:2])}): "
                           "resume it from the history, or choose another output")
    dataset = config.dataset
    if ":" in dataset and not Path(dataset).exists():
        dataset = dataset.split(":")[0]
    if not (base_dir / dataset).exists():
        raise JobError(f"dataset not found: {config.dataset} (build one with `haruhi data build -o data/`)")
    args = tc.to_cli_args(config, changed_only=True)
    if gpus > 1:
        args += ["--gpus", str(gpus)]
    if resume:
        args.append("--resume")
    return TrainPlan(config, gpus, ["haruhi", "train", *args], output, {**form})


def display_command(argv: Sequence[str]) -> str:
    """The command as a user types it in a shell."""
    return shlex.join(argv)


def runnable(argv: Sequence[str], python: str = sys.executable) -> list[str]:
    """``haruhi …`` / ``haruhi-convert …`` run by this Python (works without the console scripts on PATH)."""
    if argv and argv[0] in _TOOLS:
        return [python, *_TOOLS[argv[0]], *argv[1:]]
    return list(argv)


def convert_argv(base: str, adapter: str | None, out: str, qtype: str, events_dir: str) -> list[str]:
    if qtype not in CONVERT_TYPES:
        raise JobError(f"type must be one of {', '.join(CONVERT_TYPES)}, not {qtype!r}")
    argv = ["haruhi-convert", "--base", base, "--out", out, "--type", qtype, "--events", events_dir]
    if adapter:
        argv[3:3] = ["--adapter", adapter]
    return argv


def eval_argv(model: str, adapter: str | None, dataset: str, out: str, *, limit: int = 0,
              max_new_tokens: int = 0, extra: Sequence[str] = ()) -> list[str]:
    argv = ["haruhi", "eval", "--model", model, "--dataset", dataset, "--out", out]
    if adapter:
        argv += ["--adapter", adapter]
    if limit:
        argv += ["--limit", str(limit)]
    if max_new_tokens:
        argv += ["--max-new-tokens", str(max_new_tokens)]
    return [*argv, *extra]


def job_alive(row: JobRow) -> bool:
    """The job's process is alive and still ours: the pid may have been given to an unrelated process since
    the job ended, so its start time and command line must match what was recorded when it started."""
    started = row.config.get("pid_started")
    if started is None and row.pid and row.started_at:  # a row from before start times were recorded: the
        actual = start_time(row.pid)                    # process began before its row was written
        if actual is not None and actual > row.started_at + START_TOLERANCE:
            return False
    return same_process(row.pid, started, row.command[1:] or None)


@dataclass
class Job:
    """A job as the launcher follows it: its row, the state replayed from its events, its process."""

    row: JobRow
    state: JobState = field(default_factory=JobState)
    offset: int = 0
    proc: subprocess.Popen | None = None

    @property
    def id(self) -> int:
        return self.row.id

    @property
    def kind(self) -> str:
        return self.row.kind

    @property
    def output(self) -> Path:
        return Path(self.row.output)

    @property
    def status(self) -> str:
        return self.row.status

    @property
    def running(self) -> bool:
        return self.row.status == "running"

    @property
    def display(self) -> str:
        return display_command(self.row.command)

    def log_tail(self, lines: int = 20) -> list[str]:
        path = Path(self.row.log_path)
        try:
            with path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 16384))
                data = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        text = data.replace("\r", "\n")
        return [ln for ln in text.splitlines() if ln.strip()][-lines:]


class Launcher:
    """Starts jobs and keeps their rows in step with their events and processes."""

    def __init__(self, store: Store, *, cwd: str | os.PathLike | None = None, python: str = sys.executable,
                 available_gpus: int | None = None) -> None:
        self.table = JobTable(store)
        self.cwd = Path(cwd).resolve() if cwd else Path.cwd()
        self.python = python
        self.available_gpus = available_gpus
        self._jobs: dict[int, Job] = {}
        self.comparisons = Comparisons(lambda argv: runnable(argv, self.python), self.cwd)

    # -- starting --------------------------------------------------------------------------------
    def plan_train(self, form: dict[str, Any], resume: bool = False) -> TrainPlan:
        if self.available_gpus is None:
            self.available_gpus = gpu_count()
        return plan_train(form, cwd=self.cwd, available_gpus=self.available_gpus, resume=resume)

    def start_train(self, form: dict[str, Any]) -> Job:
        plan = self.plan_train(form)
        return self.start("train", plan.argv, plan.output, title=Path(plan.config.output).name,
                          config={"form": form, "train": plan.config.to_dict(), "gpus": plan.gpus})

    def resume(self, job: Job) -> Job:
        """Run a stopped training job's command again with ``--resume`` (a new history row, same folder)."""
        if job.kind != "train":
            raise JobError("only training jobs resume; run an eval or convert again instead")
        if job.running:
            raise JobError(f"job {job.id} is still running")
        if not list(job.output.glob("checkpoint-*")):
            raise JobError(f"{job.output} has no checkpoint to resume from")
        argv = [a for a in job.row.command if a != "--resume"] + ["--resume"]
        return self.start("train", argv, job.output, title=job.row.title + " (resumed)",
                          config={**job.row.config, "resumed_job": job.id})

    def start_convert(self, base: str, adapter: str | None, out: str | None = None, qtype: str = "auto",
                      name: str = "") -> Job:
        """Merge an adapter into its base and export a GGUF (default: into the app's models folder)."""
        name = name or (Path(adapter).parent.name if adapter else Path(base).name)
        gguf = Path(out) if out else models_dir() / f"{name}-{qtype}.gguf"
        gguf = (self.cwd / gguf).resolve()
        events_dir = gguf.parent / f".{gguf.stem}.convert"
        if adapter and not (self.cwd / adapter).is_dir():
            raise JobError(f"adapter not found: {adapter} (train first, or pick the run's adapter folder)")
        argv = convert_argv(base, adapter, str(gguf), qtype, str(events_dir))
        return self.start("convert", argv, events_dir, title=gguf.name, config={"gguf": str(gguf), "type": qtype})

    def start_eval(self, models: Sequence[tuple[str, str | None]], dataset: str, out_root: str, *,
                   names: Sequence[str] = (), limit: int = 0, max_new_tokens: int = 0,
                   extra: Sequence[str] = ()) -> Job:
        """Evaluate each (model, adapter) in turn (one at a time: they share the GPU) and compare them."""
        if not models:
            raise JobError("pick at least one model to evaluate")
        if not (self.cwd / dataset.split(":")[0]).exists() and not (self.cwd / dataset).exists():
            raise JobError(f"validation set not found: {dataset} (build one with `haruhi data build -o data/`)")
        names = list(names) or [Path(adapter).parent.name if adapter else Path(model).stem for model, adapter in models]
        if len(set(names)) != len(names):
            names = [f"{i + 1}-{n}" for i, n in enumerate(names)]
        outs = [str((self.cwd / out_root / n).resolve()) for n in names]
        specs = [{"argv": eval_argv(m, a, dataset, o, limit=limit, max_new_tokens=max_new_tokens, extra=extra),
                  "output": o, "title": f"eval {n}"} for (m, a), o, n in zip(models, outs, names)]
        for spec in specs:
            self._check_free(Path(spec["output"]))
        group = {"outputs": outs, "names": names, "root": str((self.cwd / out_root).resolve())}
        first, rest = specs[0], specs[1:]
        return self.start("eval", first["argv"], Path(first["output"]), title=first["title"],
                          config={"follow": rest, "compare": group})

    def _check_free(self, output: Path) -> None:
        for row in self.table.running_at(str(output)):
            if job_alive(row):
                raise JobError(f"{output} is in use by running job {row.id} ({row.kind}, pid {row.pid}): "
                               "wait for it, cancel it, or choose another output")
            self.poll(self.job(row.id))

    def start(self, kind: str, argv: list[str], output: Path, *, title: str = "", config: dict | None = None) -> Job:
        """Start ``argv`` in its own session, output to ``<output>/launcher.log``; record it in the store."""
        output = Path(output).resolve()
        self._check_free(output)
        output.mkdir(parents=True, exist_ok=True)
        log_path = output / LOG_FILE
        offset = (output / EVENTS_FILE).stat().st_size if (output / EVENTS_FILE).exists() else 0
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log_path.open("ab") as log:
            log.write(f"\n$ {display_command(argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(runnable(argv, self.python), cwd=self.cwd, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
            except OSError as exc:
                raise JobError(f"cannot start {argv[0]}: {exc}") from None
        row = self.table.add(kind, str(output), title=title, command=list(argv), config={**(config or {}),
                             "events_from": offset, "pid_started": start_time(proc.pid)}, log_path=str(log_path),
                             cwd=str(self.cwd), pid=proc.pid)
        job = Job(row, proc=proc)
        self._jobs[row.id] = job
        self._replay(job)
        return job

    # -- following -------------------------------------------------------------------------------
    def job(self, job_id: int) -> Job:
        """The job with its events replayed (re-attaching to one started by an earlier app)."""
        if job_id not in self._jobs:
            job = Job(self.table.get(job_id))
            self._jobs[job_id] = job
            self._replay(job)
        return self._jobs[job_id]

    def jobs(self, limit: int = 100) -> list[Job]:
        return [self.job(row.id) for row in self.table.list(limit)]

    def running(self) -> list[Job]:
        return [self.job(row.id) for row in self.table.list(status="running")]

    def _replay(self, job: Job) -> None:
        job.state = JobState()
        job.offset = 0
        events, job.offset = read_events(job.output / EVENTS_FILE, 0)
        start = job.row.config.get("events_from", 0)
        if job.kind != "train":  # a re-run eval/convert keeps appending: show only this job's part
            events, job.offset = read_events(job.output / EVENTS_FILE, start)
        for record in events:
            job.state.apply(record)
        self._settle(job)

    def poll(self, job: Job) -> bool:
        """Read new events and check the process; True if anything changed (the UI redraws then)."""
        if not job.running:
            return False
        events, job.offset = read_events(job.output / EVENTS_FILE, job.offset)
        for record in events:
            job.state.apply(record)
        return self._settle(job) or bool(events)

    def poll_all(self) -> list[Job]:
        """Poll every running job; start the follow-ups of those that completed. Returns the changed ones."""
        changed = []
        for job in self.running():
            if self.poll(job):
                changed.append(job)
        return changed

    def _settle(self, job: Job) -> bool:
        """Bring the row's status in line with the events and the process; True if it changed."""
        if not job.running:
            return False
        state = job.state
        ended = self._ended_now(job)
        exited = job.proc.poll() is not None if job.proc is not None else not job_alive(job.row)
        if not ended and not exited:
            return False
        if not ended:  # the process is gone without an end event: read what it managed to write
            events, job.offset = read_events(job.output / EVENTS_FILE, job.offset)
            for record in events:
                job.state.apply(record)
            ended = self._ended_now(job)
        if ended:
            status, error = state.status, (state.errors[-1] if state.errors and state.status == "failed" else "")
        else:
            code = job.proc.returncode if job.proc is not None else None
            status = "failed"
            tail = job.log_tail(3)
            error = (state.errors[-1] if state.errors else
                     f"the process ended (exit code {code if code is not None else 'unknown'}) without finishing"
                     + (f": {tail[-1]}" if tail else ""))
        if job.proc is not None and job.proc.poll() is None and status != "running":
            try:
                job.proc.wait(timeout=30)  # the end event is the last thing a job writes
            except subprocess.TimeoutExpired:
                pass
        cwd = Path(job.row.cwd or self.cwd)
        outputs = {k: str(cwd / v) if isinstance(v, str) and v else v for k, v in state.outputs.items()}
        self.table.update(job.id, status=status, error=error, metrics=state.metrics, outputs=outputs,
                          ended_at=time.time())
        job.row = self.table.get(job.id)
        if status == "completed":
            self._follow(job)
        return True

    def _ended_now(self, job: Job) -> bool:
        """The job's events end, and the end is this job's (a resumed run appends to the file it resumes)."""
        if job.state.status == "running":
            return False
        start = job.row.config.get("events_from", 0)
        if job.kind != "train" or not start:
            return True
        events, _ = read_events(job.output / EVENTS_FILE, start)
        return any(e["event"] == "end" for e in events)

    def _follow(self, job: Job) -> None:
        follow = list(job.row.config.get("follow") or [])
        if not follow:
            return
        nxt, rest = follow[0], follow[1:]
        try:
            self.start(job.kind, nxt["argv"], Path(nxt["output"]), title=nxt.get("title", ""),
                       config={"follow": rest, "compare": job.row.config.get("compare")})
        except JobError as exc:
            self.table.update(job.id, error=f"next job not started: {exc}")
        self.table.update(job.id, config={**job.row.config, "follow": []})
        job.row = self.table.get(job.id)

    # -- stopping --------------------------------------------------------------------------------
    def cancel(self, job: Job) -> None:
        """Ctrl-C for the job's process group: it saves what it has and ends ``cancelled``."""
        if not job.running:
            raise JobError(f"job {job.id} is not running ({job.status})")
        if not job_alive(job.row):  # gone, or its pid now belongs to another process: it ended
            self.poll(job)
            return
        try:
            os.killpg(job.row.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise JobError(f"cannot signal job {job.id} (pid {job.row.pid}): {exc}") from None

    # -- results ---------------------------------------------------------------------------------
    def comparison(self, job: Job) -> dict[str, Any] | None:
        """The side-by-side comparison of the job's eval group, written by ``haruhi eval compare`` once every run
        in it has metrics: None until then (poll again); a failed compare raises :class:`HaruhiError`."""
        return self.comparisons.result(job.row.config.get("compare") or {})

    def gguf_of(self, job: Job) -> Path | None:
        path = job.row.config.get("gguf")
        return Path(path) if path and job.status == "completed" and Path(path).is_file() else None

    def adapter_of(self, job: Job) -> Path:
        return Path(job.row.cwd or self.cwd) / (job.state.outputs.get("adapter") or job.output / "adapter")
