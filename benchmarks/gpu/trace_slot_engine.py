"""Run bench_eval with the continuous engine's forwards checked and logged, to find where a CUDA fault comes from.

Every forward's host layout is checked (positions inside the slot, slots in range, no slot twice) and the last
12 forwards, cache copies and graph replays are kept; when a forward raises, they are appended with the traceback
to ``$TRACE_OUT`` (one JSON line) and printed. ``TRACE_SYNC=1`` synchronises after each forward so an
asynchronous fault is charged to the forward that caused it (``CUDA_LAUNCH_BLOCKING=1`` pins it to the kernel).

  CUDA_LAUNCH_BLOCKING=1 TRACE_OUT=$OUT/trace.jsonl python benchmarks/gpu/trace_slot_engine.py \\
      --prompts .bench/haruhi_val_prompts.jsonl.gz --paths new --layers 4

It found the fault of 2026-11-28: a replay of the 512-row decode graph, the first one after its query offsets
were freed (``benchmarks/results/eval.md``).
"""

from __future__ import annotations

import collections
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from trainer.generation import continuous, decode_graphs  # noqa: E402
from trainer.generation import slot_attention as sa  # noqa: E402

LAST = collections.deque(maxlen=12)
COUNTS: collections.Counter = collections.Counter()
PROBLEMS: list[dict] = []
TRACE_OUT = os.environ.get("TRACE_OUT", "trace.jsonl")
SYNC = os.environ.get("TRACE_SYNC", "1") == "1"


def note(entry: dict) -> None:
    COUNTS[entry["kind"]] += 1
    entry["n"] = sum(COUNTS.values())
    LAST.append(entry)


def check(entry: dict, cache, slots, starts, lengths) -> None:
    """Record what is wrong with a forward's layout (positions past the slot, unknown slots, a slot twice)."""
    bad = []
    if (starts + lengths > cache.capacity).any():
        bad.append("end beyond capacity")
    if (slots > cache.slots).any() or (slots < 0).any():
        bad.append("slot out of range")
    live = slots[slots != cache.scratch]
    if len(set(live.tolist())) != len(live):
        bad.append("slot twice in one forward")
    if (lengths < 1).any():
        bad.append("empty sequence")
    if bad:
        PROBLEMS.append({**entry, "bad": bad})


_make_batch = sa.make_batch


def make_batch(cache, kernel, layout, device, **kwargs):
    table = np.asarray(layout, dtype=np.int64).reshape(-1, 3)
    entry = {"kind": "eager", "kernel": kernel, "seqs": len(table), "tokens": int(table[:, 2].sum()),
             "max_len": int(table[:, 2].max()), "max_end": int((table[:, 1] + table[:, 2]).max()),
             "capacity": cache.capacity, "slots": cache.slots, "layout_head": table[:8].tolist()}
    check(entry, cache, table[:, 0], table[:, 1], table[:, 2])
    note(entry)
    return _make_batch(cache, kernel, layout, device, **kwargs)


_replay = decode_graphs.DecodeGraphs.run


def replay(self, ids, slots, positions):
    slots, positions = np.asarray(slots, dtype=np.int64), np.asarray(positions, dtype=np.int64)
    entry = {"kind": "graph", "live": len(ids), "bucket": next(b for b in self.buckets if b >= len(ids)),
             "max_position": int(positions.max()), "capacity": self.cache.capacity, "slots": self.cache.slots}
    check(entry, self.cache, slots, positions, np.ones_like(positions))
    note(entry)
    return _replay(self, ids, slots, positions)


_copy = sa.SlotCache.copy


def copy(self, source, target, begin, end):
    note({"kind": "copy", "source": source, "target": target, "begin": begin, "end": end})
    if end > self.capacity or source == target or max(source, target) >= self.slots:
        PROBLEMS.append({"kind": "copy", "args": [source, target, begin, end]})
    return _copy(self, source, target, begin, end)


def dump(exc: BaseException) -> None:
    record = {"error": f"{type(exc).__name__}: {exc}"[:3000], "traceback": traceback.format_exc()[-6000:],
              "counts": dict(COUNTS), "last": list(LAST), "problems": PROBLEMS[:20]}
    with open(TRACE_OUT, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    print("TRACE:", json.dumps({k: record[k] for k in ("error", "counts", "problems")})[:3000], flush=True)
    print("TRACE last:", json.dumps(record["last"][-4:])[:3000], flush=True)


def checked(method):
    def run(self, *args, **kwargs):
        import torch

        try:
            out = method(self, *args, **kwargs)
            if SYNC and self.device.type == "cuda":
                torch.cuda.synchronize()
            return out
        except Exception as exc:
            dump(exc)
            raise
    return run


def main() -> None:
    continuous.make_batch = make_batch
    decode_graphs.DecodeGraphs.run = replay
    sa.SlotCache.copy = copy
    for name in ("_mixed_forward", "_decode_forward"):
        setattr(continuous.ContinuousEngine, name, checked(getattr(continuous.ContinuousEngine, name)))
    sys.argv = ["bench_eval.py", *sys.argv[1:]]
    try:
        runpy.run_path(str(ROOT / "benchmarks" / "bench_eval.py"), run_name="__main__")
    finally:
        print("TRACE end: counts", dict(COUNTS), "problems", PROBLEMS[:5], flush=True)


if __name__ == "__main__":
    main()
