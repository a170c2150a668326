"""CUDA graphs of one decode step: transformers' eager model code launched once per step, not per kernel.

A decode step is one token for each generating row. Its Python and kernel-launch overhead in transformers'
eager gpt-oss code is about as large as its GPU work, so each step size (a bucket of rows: 1, 2, 4, ... up to
the number of slots) is captured once and replayed. Everything a step needs from the host (token ids,
positions, the rows' slots and key counts) is one int64 vector copied into a static buffer before the
replay; the graph converts it into the :class:`~trainer.generation.slot_attention.SlotBatch` fields itself.
Rows a bucket has beyond the live ones are idle: they write to and read from the cache's scratch slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .slot_attention import SlotBatch, SlotCache

#: Rows per field in the staging vector: ids, positions, write index, key start (+1), key count, slot.
_FIELDS = 6


def buckets_for(slots: int, smallest: int = 1) -> list[int]:
    """Step sizes to capture: powers of two from ``smallest`` below ``slots``, and ``slots`` itself. Small
    ones matter: the last replies of a run decode a few rows for hundreds of steps, and an idle row still
    routes through experts whose weights the step then reads."""
    sizes, n = [], smallest
    while n < slots:
        sizes.append(n)
        n *= 2
    return sizes + [slots]


def staging_vector(cache: SlotCache, rows: int, ids, slots, positions) -> np.ndarray:
    """The host vector for a step of ``rows`` rows whose first ``len(ids)`` are live (``slots``,
    ``positions``: where each live row's token goes); the rest are idle rows on the scratch slot."""
    live = len(ids)
    idle = np.arange(rows - live, dtype=np.int64) % cache.capacity
    slot = np.concatenate([np.asarray(slots, dtype=np.int64), np.full(rows - live, cache.scratch, dtype=np.int64)])
    pos = np.concatenate([np.asarray(positions, dtype=np.int64), idle])
    token = np.concatenate([np.asarray(ids, dtype=np.int64), np.zeros(rows - live, dtype=np.int64)])
    start = slot * cache.capacity
    return np.concatenate([token, pos, start + pos, start, [0], pos + 1, slot])


def batch_from_staging(staging, cache: SlotCache, kernel: str, rows: int, cu_q) -> SlotBatch:
    """The step's :class:`SlotBatch` as views and conversions of the static staging buffer (inside the graph)."""
    n = rows
    return SlotBatch(cache=cache, kernel=kernel, input_ids=staging[0:n], positions=staging[n:2 * n],
                     write_index=staging[2 * n:3 * n], cu_q=cu_q, k_start=staging[3 * n:4 * n + 1].int(),
                     kv_len=staging[4 * n + 1:5 * n + 1].int(), seq_slot=staging[5 * n + 1:6 * n + 1], max_q=1,
                     decode=True, spans=None, read=cache.capacity)


@dataclass
class _Captured:
    """One bucket's graph and every tensor it reads or writes outside its private pool.

    A graph holds no references: a static input that only the capture's closure held (``cu_q`` once) is freed
    after the capture, its memory handed to other tensors, and a replay then reads their values as sequence
    offsets and faults (an illegal memory access in full runs, not in short ones). So they all live here."""

    graph: object
    staging: object   # device: the step's int64 vector
    host: object      # pinned host copy of it
    cu_q: object      # device: query offsets 0..rows (fixed)
    logits: object    # the graph's output


class DecodeGraphs:
    """One captured decode step per bucket; :meth:`run` replays the smallest bucket that holds the rows."""

    def __init__(self, step: Callable[[SlotBatch], object], cache: SlotCache, kernel: str, buckets: list[int],
                 device) -> None:
        import torch

        self.cache, self.kernel, self.device = cache, kernel, device
        self.graphs: dict[int, _Captured] = {}
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(device)
        for rows in sorted(buckets, reverse=True):  # largest first: the shared pool is sized by it
            staging = torch.zeros(_FIELDS * rows + 1, dtype=torch.long, device=device)
            host = torch.zeros(_FIELDS * rows + 1, dtype=torch.long).pin_memory()
            cu_q = torch.arange(rows + 1, dtype=torch.int32, device=device)
            staging.copy_(torch.from_numpy(staging_vector(cache, rows, [], [], [])))

            def forward(staging=staging, rows=rows, cu_q=cu_q):
                return step(batch_from_staging(staging, cache, kernel, rows, cu_q))

            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    eager = forward()
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = forward()
            graph.replay()
            error = (logits.float() - eager.float()).abs().max().item()
            if not error <= 1e-3 * max(eager.float().abs().max().item(), 1.0):
                raise RuntimeError(f"the captured decode step differs from the eager one by {error:g}")
            self.graphs[rows] = _Captured(graph, staging, host, cu_q, logits)
        self.buckets = sorted(self.graphs)

    def fits(self, rows: int) -> bool:
        return rows <= self.buckets[-1]

    def run(self, ids, slots, positions):
        """Logits [rows, vocab] of one decode step for the live rows (in order)."""
        import torch

        rows = next(b for b in self.buckets if b >= len(ids))
        captured = self.graphs[rows]
        captured.host.copy_(torch.from_numpy(staging_vector(self.cache, rows, ids, slots, positions)))
        captured.staging.copy_(captured.host, non_blocking=True)
        captured.graph.replay()
        return captured.logits[: len(ids)]
