"""Is a checkpoint (or an adapter) whole before we resume from it or hand it out?

A checkpoint's marker says its save finished, not that its files are still intact (a disk that filled up
under another writer, a copy cut short, a file system that lost a write). Before resuming, each file the
Trainer will load is checked: the adapter's safetensors header parses and its data offsets cover the file
exactly, the JSON files parse, and the torch files (optimizer, scheduler, RNG state) load, memory-mapped so
nothing big is read. A checkpoint that fails is skipped for the one before it, with a ``warning:`` line; the
final adapter is checked the same way before it replaces ``<output>/adapter``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import read_json
from haruhi_tui.core.safetensors_header import read_header

from .run_state import CHECKPOINT_MARKER, checkpoints

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TRAINER_STATE = "trainer_state.json"
#: The torch files the Trainer loads on resume (rng_state_<rank>.pth in a distributed run).
TORCH_FILES = ("optimizer.pt", "scheduler.pt")


def _json_object(path: Path) -> dict[str, Any]:
    data = read_json(path, path.name)
    if not isinstance(data, dict):
        raise HaruhiError(f"{path} does not hold a JSON object")
    return data


def _torch_loads(path: Path) -> None:
    import torch
    from transformers.trainer_pt_utils import safe_globals

    if not path.is_file():
        raise HaruhiError(f"{path.name} is missing")
    try:
        with safe_globals():
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a damaged zip or pickle shows as many kinds of errors
        raise HaruhiError(f"{path.name} is cut short or damaged (torch cannot load it: {type(exc).__name__})") \
            from None


def adapter_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a whole PEFT adapter (config + weights), or None."""
    try:
        _json_object(folder / ADAPTER_CONFIG)
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise HaruhiError(f"{ADAPTER_WEIGHTS} is missing")
        read_header(folder / ADAPTER_WEIGHTS, advice="it cannot be used")
    except HaruhiError as exc:
        return str(exc)
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why the Trainer could not resume from ``folder``, or None when every file it loads is whole."""
    problem = adapter_problem(folder)
    if problem:
        return problem
    try:
        _json_object(folder / CHECKPOINT_MARKER)
        state = _json_object(folder / TRAINER_STATE)
        if not isinstance(state.get("global_step"), int):
            raise HaruhiError(f"{TRAINER_STATE} has no step count")
        for name in TORCH_FILES:
            _torch_loads(folder / name)
        rng = sorted(folder.glob("rng_state*.pth"))
        if not rng:
            raise HaruhiError("rng_state.pth is missing")
        for path in rng:
            _torch_loads(path)
    except HaruhiError as exc:
        return str(exc)
    return None


def usable_checkpoint(output: Path, warn: Callable[[str], None], *, retire: bool = True) -> tuple[int, Path] | None:
    """The newest complete checkpoint whose files are whole. Each newer one that is not is named in a
    warning and (with ``retire``: rank 0 only) loses its marker, so it is never tried again and a new save
    of the same step starts clean."""
    damaged: list[str] = []
    found = None
    for step, folder in reversed(checkpoints(output)):
        problem = checkpoint_problem(folder)
        if problem is None:
            found = step, folder
            break
        damaged.append(f"{folder.name} cannot be resumed from: {problem}")
        if retire:
            with contextlib.suppress(OSError):
                (folder / CHECKPOINT_MARKER).unlink()
    for i, message in enumerate(damaged):
        last = i == len(damaged) - 1
        then = (f"; resuming from {found[1].name} instead" if found else "; no complete checkpoint is left") \
            if last else ""
        warn(message + then)
    return found
