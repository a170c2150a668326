"""``haruhi train --gpus N``: data-parallel training through torch's distributed runner (torchrun).

The launcher writes the resolved config to ``<output>/train_config.toml`` and starts
``python -m torch.distributed.run ... -m trainer.worker <config>``; the workers' output goes to
``<output>/train.log``. It shows progress by following ``<output>/events.jsonl`` (which rank 0 writes),
forwards Ctrl-C/SIGTERM to torchrun (which passes it to every worker: each finishes its step, rank 0
saves a checkpoint) and reports how the run ended from the ``end`` event. If the workers die without
one (killed, crashed), the launcher writes the ``error``/``end`` events itself.

torchrun's options differ between torch versions (torch 2.13's has ``--shutdown-timeout``; torch 2.11's
stops with "unrecognized arguments" at it), so the command carries only the options the installed
torchrun's own argument parser has.

NVLink multicast (NVLS) is switched off for NCCL and torch's symmetric memory: it is not available on
every machine we lend, and a run that needs it fails at start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Collection

from haruhi_tui.core.errors import Cancelled, HaruhiError
from haruhi_tui.core.events import EVENTS_FILE, EventLog, read_events

from . import train_config as tc
from .engines import cuda_count
from .progress import TrainProgress, format_duration
from .run_state import JOB, RunResult

LOG_FILE = "train.log"
DISTRIBUTED_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
#: How long torchrun lets workers finish their step and save after a stop signal before it kills them
#: (``--shutdown-timeout``, where torchrun has it; an older torchrun waits its fixed 30 s).
SHUTDOWN_SECONDS = 900
#: Options we pass only where the installed torchrun has them (the others are in every torch 2.x).
OPTIONAL_TORCHRUN_OPTIONS = {"--shutdown-timeout": str(SHUTDOWN_SECONDS)}


def check_gpu_count(gpus: int) -> None:
    have = cuda_count()
    if gpus > have:
        what = "no CUDA GPU" if have == 0 else f"{have} GPU" + ("s" if have != 1 else "")
        hint = " (use --cpu-processes to test the distributed path on CPU)" if have == 0 else ""
        raise HaruhiError(f"--gpus {gpus}, but this machine has {what}{hint}")


def torchrun_options() -> frozenset[str]:
    """Every option string the installed torch's distributed runner accepts, read from its own parser."""
    from torch.distributed.run import get_args_parser

    # argparse has no public list of a parser's options; each action carries its option strings.
    return frozenset(option for action in get_args_parser()._actions for option in action.option_strings)


def launch_command(config_path: Path, *, nproc: int, nnodes: int, node_rank: int, master_addr: str,
                   master_port: int, resume: bool, runner_options: Collection[str] | None = None) -> list[str]:
    """``python -m torch.distributed.run ... -m trainer.worker CONFIG``; ``runner_options`` are the options
    the torchrun that will run it accepts (default: the installed one's)."""
    available = torchrun_options() if runner_options is None else runner_options
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    cmd += [f"{option}={value}" for option, value in OPTIONAL_TORCHRUN_OPTIONS.items() if option in available]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
                f"--master-port={master_port}"]
    cmd += ["-m", "trainer.worker", str(config_path)]
    if resume:
        cmd.append("--resume")
    return cmd


def launch_env(cpu: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DISTRIBUTED_ENV)
    env["HARUHI_JOB_PID"] = str(os.getpid())
    project_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH", "")) if p)
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def launch(config: tc.TrainConfig, *, nproc: int, cpu: bool = False, resume: bool = False, nnodes: int = 1,
           node_rank: int = 0, master_addr: str = "127.0.0.1", master_port: int = 29500,
           progress: TrainProgress | None = None) -> RunResult:
    """Run ``nproc`` workers on this node (GPUs, or CPU processes with gloo) and wait for them."""
    if nproc < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise HaruhiError("--gpus and --nnodes are at least 1, and --node-rank is in [0, nnodes)")
    if cpu:
        config.device = "cpu"
        if config.engine == "unsloth":
            raise HaruhiError("--cpu-processes runs the hf engine; Unsloth needs CUDA")
    else:
        check_gpu_count(nproc)
        config.device = "cuda"
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / tc.CONFIG_FILE
    tc.save(config, config_path)
    events_path = out / EVENTS_FILE
    offset = events_path.stat().st_size if events_path.exists() else 0
    cmd = launch_command(config_path, nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
                         master_port=master_port, resume=resume)
    progress = progress or TrainProgress()
    where = "CPU processes (gloo)" if cpu else "GPUs (NCCL)"
    progress.note(f"launching {nproc} {where} x {nnodes} node(s); worker output in {out / LOG_FILE}")
    with (out / LOG_FILE).open("ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, env=launch_env(cpu), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        forwarded: list[str] = []

        def forward(signum: int, frame: Any) -> None:
            forwarded.append(signal.Signals(signum).name)
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            end, errors = _follow(proc, events_path, offset, progress)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            progress.close()
    return _outcome(config, proc.returncode, end, errors, forwarded, out)


def _follow(proc: subprocess.Popen, events_path: Path, offset: int,
            progress: TrainProgress) -> tuple[dict[str, Any] | None, list[str]]:
    end: dict[str, Any] | None = None
    errors: list[str] = []
    while True:
        running = proc.poll() is None
        records, offset = read_events(events_path, offset)
        for record in records:
            kind = record["event"]
            if kind == "start":
                progress.start(int(record.get("total") or 0), int(record.get("resumed_from") or 0))
                end = None
            elif kind == "step":
                progress.step(record)
            elif kind == "log" and record.get("message") != "details":
                progress.note(record.get("message", ""), record.get("level", "info"))
            elif kind == "error":
                errors.append(record.get("message", ""))
            elif kind == "end":
                end = record
        if not running:
            return end, errors
        time.sleep(0.5)


def _outcome(config: tc.TrainConfig, returncode: int, end: dict[str, Any] | None, errors: list[str],
             forwarded: list[str], out: Path) -> RunResult:
    if end is None:
        log = EventLog(out, JOB)
        if forwarded:
            log.end("cancelled")
            raise Cancelled(f"training cancelled ({forwarded[0]}) before a checkpoint could be saved; "
                            f"see {out / LOG_FILE}")
        message = errors[-1] if errors else (f"the training processes exited with code {returncode} without "
                                              f"finishing; see {out / LOG_FILE}")
        if not errors:
            log.error(message, kind="crash")
        log.end("failed")
        raise HaruhiError(message)
    status = end.get("status")
    metrics, outputs = end.get("metrics") or {}, end.get("outputs") or {}
    if status == "completed":
        return RunResult("completed", int(metrics.get("steps") or 0), metrics, outputs)
    if status == "cancelled":
        where = f"checkpoint saved in {outputs['checkpoint']}" if outputs.get("checkpoint") else "no checkpoint saved"
        raise Cancelled(f"training cancelled at step {metrics.get('steps')}; {where}; continue with "
                        f"haruhi train --resume --output {config.output}")
    raise HaruhiError(errors[-1] if errors else f"training failed; see {out / LOG_FILE}")


def summary_line(result: RunResult) -> str:
    m = result.metrics
    parts = [f"trained {result.steps} steps"]
    if m.get("loss") is not None:
        parts.append(f"final loss {m['loss']:.4f}")
    if m.get("tokens_per_second"):
        parts.append(f"{m['tokens_per_second']:,.0f} tok/s")
    if m.get("elapsed") is not None:
        parts.append(f"in {format_duration(m['elapsed'])}")
    line = ", ".join(parts)
    if result.outputs.get("adapter"):
        line += f" -> adapter {result.outputs['adapter']}"
    return line
