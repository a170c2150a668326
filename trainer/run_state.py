"""What one training run shares between :mod:`trainer.train_loop`, the Trainer callbacks of
:mod:`trainer.hf_trainer` and the launcher of :mod:`trainer.launch`, without importing torch.

* The output folder's checkpoints: the Trainer's ``checkpoint-N`` plus a marker written once the save is
  complete, so a kill -9 in the middle of a save leaves a folder that resume does not take.
* :class:`GracefulStop`: SIGINT/SIGTERM handling (stop at once before training, at the end of the step
  during it).
* :class:`TokenCounts` and :class:`Run`: per-step and per-run bookkeeping; :class:`RunResult`: how it ended.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from haruhi_tui.core.events import EventLog

from . import train_config as tc
from .engines import Placement

if TYPE_CHECKING:
    from .progress import TrainProgress

JOB = "train"
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_MARKER = "haruhi_checkpoint.json"


# -- checkpoints ------------------------------------------------------------------------------------

def checkpoints(output: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (their marker written), oldest first."""
    found = []
    if output.is_dir():
        for path in output.glob(CHECKPOINT_PREFIX + "*"):
            suffix = path.name[len(CHECKPOINT_PREFIX):]
            if suffix.isdigit() and (path / CHECKPOINT_MARKER).is_file():
                found.append((int(suffix), path))
    return sorted(found)


def latest_checkpoint(output: Path) -> tuple[int, Path] | None:
    found = checkpoints(output)
    return found[-1] if found else None


# -- signals ----------------------------------------------------------------------------------------

class GracefulStop:
    """SIGINT/SIGTERM: before training, stop at once; during training, ask the loop to save and stop at
    the end of the step; a second signal (after a moment, so one Ctrl-C delivered twice counts once)
    stops at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.graceful = False
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if not self.graceful:
            self.requested = self.requested or name
            raise KeyboardInterrupt
        if self.requested is None:
            self.requested, self._first = name, time.time()
        elif time.time() - self._first > 2.0:
            raise KeyboardInterrupt


# -- bookkeeping ------------------------------------------------------------------------------------

@dataclass
class TokenCounts:
    """Tokens of the batches since the last optimizer step, in the order :func:`trainer.train_data.collate`
    reports them (``haruhi_tokens``): ``padded`` (rows x width, padding included), ``real`` (padding left
    out: what tokens per second count) and ``trainable`` (the tokens that carry the loss)."""

    padded: int = 0
    real: int = 0
    trainable: int = 0

    def add(self, padded: int, real: int, trainable: int) -> None:
        self.padded += int(padded)
        self.real += int(real)
        self.trainable += int(trainable)

    def take(self) -> "TokenCounts":
        """The counts so far; the counter starts again from zero (once per optimizer step)."""
        taken = replace(self)
        self.padded = self.real = self.trainable = 0
        return taken


def finite_number(value: Any) -> float | None:
    """``value`` as a float for events.jsonl; None for what is missing, not a number, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def gpu_memory_gb() -> float | None:
    """Peak CUDA memory of this process in GiB; None without CUDA (torch is imported only here)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


@dataclass
class Run:
    """The state of one run that the callbacks and the final bookkeeping share."""

    config: tc.TrainConfig
    placement: Placement
    events: EventLog
    stop: GracefulStop
    sink: TrainProgress | None = None
    on_step: Callable[[dict[str, Any]], None] | None = None
    total_steps: int = 0
    steps_per_epoch: int = 0
    #: Median tokens/s of a one-device run of the same setup, for a distributed run's scaling (trainer.throughput).
    speed_reference: float | None = None
    #: What every process must have chosen alike (rows, micro-batches, checkpointing, rounds per epoch).
    layout_key: tuple[int, ...] = ()
    steps_done: int = 0
    first_step: int = 0
    started: float = field(default_factory=time.time)
    elapsed_before: float = 0.0
    tokens_total: int = 0
    padded_total: int = 0
    last_loss: float | None = None
    last_checkpoint: Path | None = None
    step_tokens: TokenCounts = field(default_factory=TokenCounts)

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def note(self, message: str) -> None:
        """Shown to the person watching, not recorded (before the start event)."""
        if self.sink and self.placement.is_main:
            self.sink.note(message)

    def log(self, message: str, level: str = "info") -> None:
        if self.placement.is_main:
            self.events.emit("log", level=level, message=message)
            if self.sink:
                self.sink.note(message)

    def sink_start(self, done: int) -> None:
        if self.sink and self.placement.is_main:
            self.sink.start(self.total_steps, done)


@dataclass
class RunResult:
    """How a run ended (``completed``), its step count, the end event's metrics and output paths."""

    status: str
    steps: int
    metrics: dict[str, Any]
    outputs: dict[str, str]
