"""What a person sees while training: a rich progress bar on a terminal, a plain line now and then in a log:
step, loss, tokens/s (in all, per GPU and as a share of one GPU's speed), peak memory over the processes, the
projected time of one epoch and the ETA.

Fed with the same ``step`` records that go to events.jsonl, so the in-process view and the multi-process
launcher (which tails events.jsonl) show the same thing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def speed_text(record: dict[str, Any]) -> str:
    """Tokens/s (the recent median where known) in all and per GPU, with the scaling against one GPU:
    ``48,384 tok/s (12,096/GPU, 86% of one GPU)``."""
    rate = record.get("tokens_per_second_recent") or record.get("tokens_per_second")
    if not rate:
        return ""
    text = f"{rate:,.0f} tok/s"
    world = record.get("world_size") or 1
    if world > 1:
        per_gpu = record.get("tokens_per_second_per_device")
        extra = [f"{per_gpu:,.0f}/GPU"] if per_gpu else []
        if record.get("scaling"):
            extra.append(f"{record['scaling']:.0%} of one GPU")
        text += f" ({', '.join(extra)})" if extra else ""
    return text


def memory_text(record: dict[str, Any]) -> str:
    """Peak GPU memory: ``54.1 GiB`` on one GPU, ``53.8-54.1 GiB`` over several (lowest-highest process)."""
    ranks = [m for m in record.get("rank_memory_gb") or [] if m is not None]
    if len(ranks) > 1:
        return f"{min(ranks):.1f}-{max(ranks):.1f} GiB"
    peak = record.get("gpu_memory_gb")
    return f"{peak:.1f} GiB" if peak else ""


def step_line(record: dict[str, Any]) -> str:
    loss = record.get("loss")
    parts = [f"step {record.get('step')}/{record.get('total')}",
             f"loss {loss:.4f}" if isinstance(loss, (int, float)) else "loss -"]
    if record.get("learning_rate") is not None:
        parts.append(f"lr {record['learning_rate']:.2e}")
    parts += [text for text in (speed_text(record), memory_text(record)) if text]
    if record.get("epoch_time"):
        parts.append(f"epoch {format_duration(record['epoch_time'])}")
    parts.append(f"eta {format_duration(record.get('eta'))}")
    return "  ".join(parts)


class TrainProgress:
    """Step/total, loss, tokens/s and ETA; a live bar on a terminal, else a line every ~5% of the run."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        self._total = 0
        self._every = 1
        self._last_line = 0.0

    def start(self, total: int, done: int = 0) -> None:
        self._total = total
        self._every = max(1, total // 20)
        if self.live and self._progress is None:
            self._progress = Progress(
                TextColumn("[bold cyan]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss [bold]{task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                TextColumn("{task.fields[memory]}"), TextColumn("eta {task.fields[eta]}"), console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total, completed=done, loss="-", speed="- tok/s",
                                                 memory="", eta="--:--")
            self._progress.start()

    def step(self, record: dict[str, Any]) -> None:
        step, total = record.get("step", 0), record.get("total") or self._total
        if self._progress is not None:
            loss = record.get("loss")
            self._progress.update(self._task, completed=step, total=total,
                                  loss=f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
                                  speed=speed_text(record) or "- tok/s", memory=memory_text(record),
                                  eta=format_duration(record.get("eta")))
            return
        now = time.time()
        if step == 1 or step == total or step % self._every == 0 or now - self._last_line > 60:
            self._last_line = now
            self.console.print(step_line(record), highlight=False)

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        sys.stderr.flush()
