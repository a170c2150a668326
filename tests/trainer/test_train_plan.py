"""Batch plans for several processes: each micro-batch gives every process the same shapes and about the same
tokens, every sequence is trained once per epoch, and the order is fixed by the seed (so a resumed run finds it).

The slow test uses real haruhi_train lengths: samples built from real characters by the dataset builder and
tokenized with the real o200k_harmony tokenizer."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from trainer.batch_plan import BatchPlan, PlannedBatches, plan_batches, plan_grouped, plan_packed
from trainer.train_data import Encoded


def lengths_like_haruhi_train(n: int = 1500, seed: int = 0) -> list[int]:
    """Persona prompts of ~700-1,300 tokens plus a scene, a long tail cut at 2048 (the shape of haruhi_train)."""
    rng = random.Random(seed)
    return [min(2048, int(rng.lognormvariate(7.05, 0.3))) for _ in range(n)]


def check_plan(plan: BatchPlan, lengths: list[int], spread: float) -> None:
    world, rows = plan.world, plan.batch_size
    trained = Counter()
    for k, rnd in enumerate(plan.rounds):
        assert len(rnd.batches) == world
        for rank, batch in enumerate(rnd.batches):
            assert 1 <= len(batch) <= rows
            assert all(sum(lengths[i] for i in row) <= rnd.width for row in batch)
            if rank not in rnd.fillers:
                trained.update(i for row in batch for i in row)
        tokens = plan.rank_tokens(k)
        if not rnd.fillers and all(len(b) == rows for b in rnd.batches):  # full rounds are balanced
            assert max(tokens) - min(tokens) <= spread * (sum(tokens) / world), (k, tokens)
    assert sorted(trained) == list(range(len(lengths))) and set(trained.values()) == {1}
    assert sum(len(rnd.batches[0]) != rows for rnd in plan.rounds) <= 1  # only the last round is short


@pytest.mark.parametrize("world, rows", [(1, 8), (2, 8), (4, 8), (4, 4), (8, 2)])
def test_rounds_balance_tokens_and_train_every_sequence_once(world, rows):
    lengths = lengths_like_haruhi_train()
    plan = plan_grouped(lengths, rows, 2048, seed=42, world=world)
    check_plan(plan, lengths, spread=0.02)
    assert plan.real_token_share > 0.97 and plan.token_spread() < 0.01
    packed = plan_packed([n // 4 for n in lengths], rows, 2048, seed=42, world=world)
    check_plan(packed, [n // 4 for n in lengths], spread=0.05)


def test_every_process_gets_the_same_shapes_each_micro_batch():
    lengths = lengths_like_haruhi_train(200)
    sequences = [Encoded(list(range(n)), list(range(n))) for n in lengths]
    plan = plan_batches(sequences, "grouped", 4, 2048, seed=1, world=4)
    data = PlannedBatches(sequences, plan, pad_id=0)
    for k in range(len(plan.rounds)):
        shapes = {tuple(data[k * 4 + rank]["input_ids"].shape) for rank in range(4)}
        assert len(shapes) == 1, (k, shapes)


def test_epochs_reorder_the_rounds_deterministically():
    lengths = lengths_like_haruhi_train(400)
    sequences = [Encoded([1] * n, [1] * n) for n in lengths]
    plan = plan_batches(sequences, "grouped", 8, 2048, seed=7, world=2)
    orders = [plan.epoch_order(epoch) for epoch in range(3)]
    assert all(sorted(order) == list(range(len(plan.rounds))) for order in orders)
    assert orders[0] != orders[1] != orders[2]
    again = plan_batches(sequences, "grouped", 8, 2048, seed=7, world=2)
    assert again.rounds == plan.rounds and [again.epoch_order(e) for e in range(3)] == orders
    assert plan_batches(sequences, "grouped", 8, 2048, seed=8, world=2).epoch_order(0) != orders[0]

    # What process r is handed (items r, r + world, ...: accelerate's sharding of a sequential sampler) is
    # its batch of each round in the epoch's order; a fresh dataset set to the same epoch (a resumed run)
    # hands out the same batches.
    data, resumed = PlannedBatches(sequences, plan, 0), PlannedBatches(sequences, again, 0)
    data.set_epoch(2)
    resumed.set_epoch(2)
    for index in range(len(data)):
        round_index, rank = data.locate(index)
        assert (round_index, rank) == (orders[2][index // 2], index % 2)
        assert data[index]["haruhi_tokens"] == resumed[index]["haruhi_tokens"]
    with pytest.raises(IndexError):
        data[len(data)]


def test_a_round_with_fewer_rows_than_processes_keeps_everyone_in_step():
    sequences = [Encoded([5] * n, [5] * n) for n in (300, 200, 100)]
    plan = plan_batches(sequences, "grouped", 8, 512, seed=0, world=4)
    (rnd,) = plan.rounds
    assert len(rnd.fillers) == 1 and plan.rank_tokens(0)[rnd.fillers[0]] == 0
    data = PlannedBatches(sequences, plan, 0)
    filler = data[rnd.fillers[0]]
    assert (filler["labels"] == -100).all() and filler["haruhi_tokens"][1:] == (0, 0)
    trained = [i for rank, b in enumerate(rnd.batches) if rank not in rnd.fillers for row in b for i in row]
    assert sorted(trained) == [0, 1, 2]


@pytest.mark.slow
def test_real_haruhi_train_lengths_are_balanced_within_a_few_percent(characters_dir, harmony_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from haruhi_tui.core.dataset import BuildOptions, build, write
    from trainer import train_config as tc
    from trainer.train_loop import prepare_sequences

    result = build(characters_dir, BuildOptions(), only=["haruhi", "Luna", "jiumozhi", "Sheldon", "tangshiye",
                                                         "wangduoyu"])
    dataset = write(result, tmp_path)["haruhi_train"]
    tokenizer = AutoTokenizer.from_pretrained(str(harmony_tokenizer_dir))
    sequences, stats = prepare_sequences(tc.resolve({}, {"dataset": str(dataset)}), tokenizer, "harmony")
    lengths = [len(s) for s in sequences]
    assert len(sequences) > 300 and 600 < stats.tokens / len(sequences) < 2048
    for world, rows in ((2, 8), (4, 8), (4, 4)):
        plan = plan_batches(sequences, "grouped", rows, 2048, seed=42, world=world)
        check_plan(plan, lengths, spread=0.05)
        assert plan.token_spread() < 0.02, (world, rows, plan.token_spread())
