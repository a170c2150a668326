"""Which already-computed prompt prefix a request can start from.

Requests are served in sorted order of their token ids, so prompts that share a prefix (a character's
persona, then a scene's retrieved scenes and history) are neighbours, and the longest prefix a request shares
with *any* earlier one is the one it shares with its predecessor: ``shared(j, i)`` for ``j < i`` is the
minimum of the neighbour overlaps between them. A slot of the KV cache holds the prompt of its last owner up
to what was computed; :func:`best_source` finds the slot a request should copy from, and whether waiting a
forward for a slot that is still computing a longer shared prefix is worth it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two id arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


class SortedPrompts:
    """Prompts in serving order (sorted by ids) and the overlap of each with its predecessor."""

    def __init__(self, prompts: Sequence[np.ndarray]) -> None:
        self.prompts = list(prompts)
        overlaps = [0] + [common_prefix(self.prompts[k - 1], self.prompts[k]) for k in range(1, len(self.prompts))]
        self.with_previous = np.array(overlaps, dtype=np.int64)
        self.lengths = np.array([len(p) for p in self.prompts], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.prompts)

    def shared_with(self, i: int, others) -> np.ndarray:
        """``shared(j, i)`` for each ``j`` in ``others`` (any order; ``j == i`` gives the whole prompt)."""
        others = np.asarray(others, dtype=np.int64)
        if others.size == 0:
            return np.empty(0, dtype=np.int64)
        low, high = min(int(others.min()), i), max(int(others.max()), i)
        # overlap of serving indices a < b = min(with_previous[a + 1 .. b]); laid out from ``low`` to ``high``
        back = np.minimum.accumulate(self.with_previous[i:low:-1])[::-1] if i > low else np.empty(0, np.int64)
        forward = np.minimum.accumulate(self.with_previous[i + 1: high + 1]) if high > i else np.empty(0, np.int64)
        line = np.concatenate([back, [len(self.prompts[i])], forward])
        return line[others - low]


@dataclass(frozen=True)
class Source:
    slot: int | None   # the slot to copy from (None: nothing to reuse)
    now: int           # prompt tokens reusable now
    soon: int          # prompt tokens reusable once the slots still computing their prompts are done


def best_source(prompts: SortedPrompts, i: int, slots, owners, computed, computing) -> Source:
    """The slot whose cached tokens start request ``i`` best.

    Per slot holding something: its index, its owner (a serving index) whose first ``computed`` prompt
    tokens are in the cache, and whether the owner is still ``computing`` (prefilling) its prompt. Reuse is
    capped at the prompt minus one token: the last prompt token is always computed, for its logits.
    """
    slots, owners = np.asarray(slots, dtype=np.int64), np.asarray(owners, dtype=np.int64)
    if slots.size == 0:
        return Source(None, 0, 0)
    overlap = np.minimum(np.minimum(prompts.shared_with(i, owners), prompts.lengths[owners]), prompts.lengths[i] - 1)
    usable = np.minimum(overlap, np.asarray(computed, dtype=np.int64))
    best = int(usable.argmax())  # the first of equals: list the request's own slot first to keep it in place
    now = int(usable[best])
    soon = int(np.where(np.asarray(computing, dtype=bool), overlap, usable).max())
    return Source(int(slots[best]) if now > 0 else None, now, max(soon, now))
