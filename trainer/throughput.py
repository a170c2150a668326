"""Training speed as the person watching sees it: tokens/s in all and per device, data-parallel scaling against
a one-device run, and the projected time of one epoch.

Step rates vary with the batch widths of length-grouped data, so the shown rate is the median of the recent
steps; the first steps of a session (compilation, warm-up) and profiled steps are left out.

The one-device reference: a run on one CUDA device that ends (completed or stopped) with enough measured steps
records its median tokens/s in ``<data dir>/train_speed.json`` under a key made of everything that decides the
speed (model, engine, step layout, sequence length, LoRA, dataset, GPU model). A later run with the same key on
N devices reports its tokens/s per device as a share of it: its scaling.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import write_json
from haruhi_tui.core.paths import data_dir

SPEED_FILE = "train_speed.json"
#: Steps of a session left out of the figures (the first ones compile kernels and warm up).
WARMUP_STEPS = 3
#: Steps the shown rate is the median of.
RECENT_STEPS = 20
#: Measured steps a one-device run needs before it becomes a reference.
REFERENCE_MIN_STEPS = 5


class Throughput:
    """Step times and real tokens of one session (summed over ranks), and what they say."""

    def __init__(self, world: int, steps_per_epoch: int, reference: float | None = None) -> None:
        self.world = max(1, world)
        self.steps_per_epoch = steps_per_epoch
        self.reference = reference
        self.steps: list[tuple[float, int, bool]] = []  # (seconds, real tokens, profiled)

    def add(self, seconds: float, real: int, *, profiled: bool = False) -> None:
        self.steps.append((seconds, real, profiled))

    def measured(self) -> list[tuple[float, int]]:
        """The steps that count: after the warm-up (fewer left out of a short session), not profiled."""
        skip = min(WARMUP_STEPS, max(0, len(self.steps) - 1))
        return [(t, n) for t, n, profiled in self.steps[skip:] if not profiled and t > 0]

    def step_seconds(self) -> float:
        """Mean time of the recent steps (the last step's while none is measured yet)."""
        recent = [t for t, _ in self.measured()[-50:]] or [t for t, _, _ in self.steps[-1:]]
        return sum(recent) / len(recent) if recent else 0.0

    def recent_rate(self) -> float | None:
        """Median tokens/s (all ranks) of the recent measured steps."""
        rates = [n / t for t, n in self.measured()[-RECENT_STEPS:]]
        return statistics.median(rates) if rates else None

    def overall(self) -> float | None:
        """Tokens/s over every measured step of the session."""
        steps = self.measured()
        seconds = sum(t for t, _ in steps)
        return round(sum(n for _, n in steps) / seconds, 1) if seconds > 0 else None

    def fields(self) -> dict[str, Any]:
        """What each step record adds: world size, recent tokens/s in all and per device, scaling, epoch time."""
        rate = self.recent_rate()
        per_device = rate / self.world if rate else None
        scaling = per_device / self.reference if per_device and self.reference and self.world > 1 else None
        step = self.step_seconds()
        return {"world_size": self.world,
                "tokens_per_second_recent": round(rate, 1) if rate else None,
                "tokens_per_second_per_device": round(per_device, 1) if per_device else None,
                "scaling": round(scaling, 3) if scaling else None,
                "epoch_time": round(step * self.steps_per_epoch, 1) if step and self.steps_per_epoch else None}


# -- the one-device reference -----------------------------------------------------------------------

def speed_key(**parts: Any) -> str:
    """A stable key for what decides training speed (``parts``: model, engine, layout, GPU, ...)."""
    return json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)


def _speed_file() -> Path:
    return data_dir() / SPEED_FILE


def load_reference(key: str) -> float | None:
    """Median tokens/s of the last one-device run with this key, if one was recorded."""
    try:
        entry = json.loads(_speed_file().read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    value = entry.get("tokens_per_second") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def save_reference(key: str, speed: Throughput, output: Path) -> float | None:
    """Record a one-device session's median tokens/s under ``key`` (None if too few steps were measured)."""
    steps = speed.measured()
    if speed.world != 1 or len(steps) < REFERENCE_MIN_STEPS:
        return None
    rate = statistics.median(n / t for t, n in steps)
    path = _speed_file()
    try:
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if not isinstance(known, dict):
            known = {}
        known[key] = {"tokens_per_second": round(rate, 1), "steps": len(steps), "output": str(output),
                      "time": round(time.time(), 3)}
        write_json(path, known)
    except (OSError, ValueError, HaruhiError):
        return None  # a reference is a nicety: a read-only data folder must not fail the run
    return rate
