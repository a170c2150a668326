"""Which rows every process trains on at every micro-batch: plans that give all processes the same work.

A plan is made once per run from the sequence lengths alone, deterministic for the seed:

* **units**: ``packed`` rows (several sequences filling up to ``max_length`` tokens, best-fit decreasing; position
  ids restart per sequence, see :func:`trainer.train_data.collate`) or ``grouped`` rows (one sequence each, for
  attention kernels that ignore packed-sample boundaries).
* **rounds**: the units, longest first, are cut into rounds of ``world x batch_size``. A round is one micro-batch
  on every process at once: each process gets ``batch_size`` units, dealt longest first to the process with the
  fewest tokens so far, and every process's batch is padded to the round's one width. So at each micro-batch
  all processes hold the same tensor shapes and about the same number of real tokens: nobody waits for a
  process that drew longer samples, and nothing is compiled for a shape only one process sees. (A round with
  fewer units than processes, at the end of a tiny dataset, gives the rest a copy of a row without labels.)
* **epochs**: the rounds are shuffled for every epoch from ``(seed, epoch)``: each epoch trains every sequence
  once, in a new order, and a resumed run finds the same order again.

:class:`PlannedBatches` is the Trainer's dataset: item ``k * world + rank`` is process ``rank``'s batch of the
epoch's ``k``-th round, which is what the Trainer's sequential sampler, sharded by accelerate (process ``r``
takes items ``r, r + world, ...``), hands to each process.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from .train_data import Encoded, collate, padded_length

Rows = tuple[tuple[int, ...], ...]  # one batch: rows of sequence indices


@dataclass(frozen=True)
class Round:
    """One micro-batch on every process: ``batches[rank]`` holds that process's rows, all padded to ``width``."""

    batches: tuple[Rows, ...]
    width: int
    #: Processes whose batch is a copy of a row without labels (the round had fewer units than processes).
    fillers: tuple[int, ...] = ()


@dataclass
class BatchPlan:
    """Rounds of batches for ``world`` processes; see the module docstring."""

    mode: str
    world: int
    batch_size: int
    seed: int
    rounds: list[Round]
    lengths: list[int] = field(repr=False)

    # -- what the trainer needs ---------------------------------------------------------------------

    def epoch_order(self, epoch: int) -> list[int]:
        """The rounds in the order epoch ``epoch`` trains them (seeded by the plan's seed and the epoch)."""
        order = list(range(len(self.rounds)))
        random.Random(f"haruhi-rounds:{self.seed}:{epoch}").shuffle(order)
        return order

    def rank_tokens(self, index: int) -> list[int]:
        """Real tokens (padding and label-free fillers left out) each process trains in round ``index``."""
        rnd = self.rounds[index]
        return [0 if rank in rnd.fillers else sum(self.lengths[i] for row in rows for i in row)
                for rank, rows in enumerate(rnd.batches)]

    @property
    def batches(self) -> list[list[list[int]]]:
        """Every process's batch, round by round (plan order; fillers included)."""
        return [[list(row) for row in rows] for rnd in self.rounds for rows in rnd.batches]

    @property
    def max_batch_tokens(self) -> int:
        """The largest micro-batch one process computes (rows x padded width), for memory planning."""
        return max((len(rows) * rnd.width for rnd in self.rounds for rows in rnd.batches), default=0)

    def max_batch_labelled(self, trainable: Sequence[int]) -> int:
        """The most labelled tokens one process's micro-batch holds (``trainable``: per sequence)."""
        return max((sum(trainable[i] for row in rows for i in row) for rnd in self.rounds for rows in rnd.batches),
                   default=0)

    # -- figures ------------------------------------------------------------------------------------

    @property
    def real_tokens(self) -> int:
        return sum(sum(self.rank_tokens(k)) for k in range(len(self.rounds)))

    @property
    def padded_tokens(self) -> int:
        return sum(len(rows) * rnd.width for rnd in self.rounds for rows in rnd.batches)

    @property
    def real_token_share(self) -> float:
        padded = self.padded_tokens
        return self.real_tokens / padded if padded else 0.0

    @property
    def rows(self) -> int:
        return sum(len(rows) for rnd in self.rounds for rows in rnd.batches)

    def token_spread(self) -> float:
        """How unequal the processes' real tokens are, over the rounds: mean of (max - min) / mean per round."""
        spreads = []
        for k in range(len(self.rounds)):
            tokens = self.rank_tokens(k)
            mean = sum(tokens) / len(tokens)
            if mean:
                spreads.append((max(tokens) - min(tokens)) / mean)
        return sum(spreads) / len(spreads) if spreads else 0.0

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "world": self.world, "batch_size": self.batch_size, "rounds": len(self.rounds),
                "batches": len(self.rounds) * self.world, "rows": self.rows, "real_tokens": self.real_tokens,
                "padded_tokens": self.padded_tokens, "real_token_share": round(self.real_token_share, 4),
                "max_batch_tokens": self.max_batch_tokens, "rank_token_spread": round(self.token_spread(), 4)}


# -- planning ---------------------------------------------------------------------------------------

def _length_order(lengths: Sequence[int], rng: random.Random) -> list[int]:
    order = list(range(len(lengths)))
    rng.shuffle(order)  # ties in length fall in a seeded random order
    order.sort(key=lambda i: -lengths[i])
    return order


def _packed_units(lengths: Sequence[int], max_length: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Best-fit decreasing into rows of ``max_length`` tokens."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in _length_order(lengths, rng):
        need = lengths[i]
        k = bisect.bisect_left(free, (need, -1))
        if k < len(free):
            room, row = free.pop(k)
        else:
            rows.append([])
            room, row = max_length, len(rows) - 1
        rows[row].append(i)
        if room - need > 0:
            bisect.insort(free, (room - need, row))
    return [tuple(row) for row in rows]


def _deal(units: list[tuple[int, ...]], unit_tokens: list[int], world: int, batch_size: int) -> list[list[int]]:
    """Units (longest first) to processes: each to the process with the fewest tokens that still has room."""
    hands: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for u in range(len(units)):
        rank = min((r for r in range(world) if len(hands[r]) < batch_size), key=lambda r: (load[r], r))
        hands[rank].append(u)
        load[rank] += unit_tokens[u]
    return hands


def _rounds(units: list[tuple[int, ...]], lengths: Sequence[int], world: int, batch_size: int,
            rng: random.Random) -> list[Round]:
    unit_tokens = [sum(lengths[i] for i in unit) for unit in units]
    order = _length_order(unit_tokens, rng)
    per_round = world * batch_size
    rounds = []
    for start in range(0, len(order), per_round):
        chunk = order[start:start + per_round]
        hands = _deal([units[u] for u in chunk], [unit_tokens[u] for u in chunk], world, batch_size)
        fillers = tuple(rank for rank, hand in enumerate(hands) if not hand)
        shortest = (len(chunk) - 1,)  # the round's shortest unit, copied without labels for an empty hand
        batches = tuple(tuple(units[chunk[u]] for u in (hand or shortest)) for hand in hands)
        width = padded_length(max(unit_tokens[u] for u in chunk))
        rounds.append(Round(batches, width, fillers))
    rng.shuffle(rounds)
    return rounds


def plan_packed(lengths: Sequence[int], batch_size: int, max_length: int, seed: int, world: int = 1) -> BatchPlan:
    """Rows filled up to ``max_length`` tokens with several sequences; rows of similar fill share a round."""
    rng = random.Random(seed)
    units = _packed_units(lengths, max_length, rng)
    return BatchPlan("packed", world, batch_size, seed, _rounds(units, lengths, world, batch_size, rng), list(lengths))


def plan_grouped(lengths: Sequence[int], batch_size: int, max_length: int, seed: int, world: int = 1) -> BatchPlan:
    """One sequence per row, ``batch_size`` rows of similar length per batch. A fixed row count keeps the batch
    dimension constant for kernels compiled per shape (Unsloth); only the width varies."""
    rng = random.Random(seed)
    units = [(i,) for i in range(len(lengths))]
    return BatchPlan("grouped", world, batch_size, seed, _rounds(units, lengths, world, batch_size, rng), list(lengths))


def plan_batches(sequences: Sequence[Encoded], mode: str, batch_size: int, max_length: int, seed: int,
                 world: int = 1) -> BatchPlan:
    lengths = [len(s) for s in sequences]
    if mode == "packed":
        return plan_packed(lengths, batch_size, max_length, seed, world)
    if mode == "grouped":
        return plan_grouped(lengths, batch_size, max_length, seed, world)
    raise ValueError(f"unknown packing mode {mode!r}")


# -- the Trainer's dataset --------------------------------------------------------------------------

class PlannedBatches:
    """A map-style dataset whose items are whole planned batches (the DataLoader's batch size is 1), in the
    order of the current epoch (:meth:`set_epoch`, which the Trainer's data loader calls every epoch)."""

    def __init__(self, sequences: Sequence[Encoded], plan: BatchPlan, pad_id: int) -> None:
        self.sequences = sequences
        self.plan = plan
        self.pad_id = pad_id
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._order = self.plan.epoch_order(self.epoch)

    def locate(self, index: int) -> tuple[int, int]:
        """(round of the plan, process) of item ``index`` in the current epoch."""
        k, rank = divmod(index, self.plan.world)
        return self._order[k], rank

    def __len__(self) -> int:
        return len(self.plan.rounds) * self.plan.world

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        round_index, rank = self.locate(index)
        rnd = self.plan.rounds[round_index]
        return collate(rnd.batches[rank], self.sequences, self.plan.mode, self.pad_id, width=rnd.width,
                       labelled=rank not in rnd.fillers)


def unwrap_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The DataLoader collate function: each item already is a batch."""
    return items[0]
