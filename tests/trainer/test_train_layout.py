"""The step layout picked by the card's memory, the speed figures a run reports, and how they are shown.

The memory estimate is held to what was measured for gpt-oss-20b on the GPU machine (benchmarks/results/
full-size): it must never be below a measured peak, nor far above it."""

from __future__ import annotations

from pathlib import Path

import pytest

from haruhi_tui.core.errors import HaruhiError
from trainer import throughput
from trainer import train_config as tc
from trainer.progress import step_line
from trainer.step_layout import GIB, candidates, choose, model_footprint
from trainer.throughput import Throughput


@pytest.fixture(scope="module")
def gpt_oss_20b(tmp_path_factory) -> Path:
    """The config of gpt-oss-20b (24 layers, 32 experts, top 4): enough to build the model on the meta device."""
    from transformers import GptOssConfig

    path = tmp_path_factory.mktemp("gpt_oss_20b")
    GptOssConfig(num_hidden_layers=24, num_local_experts=32, num_experts_per_tok=4).save_pretrained(path)
    return path


#: (engine, tokens of the widest micro-batch, labelled tokens in it, checkpointing, measured peak GiB on an H100)
MEASURED = [("unsloth", 8 * 1024, 8 * 1024, True, 44.6), ("unsloth", 8 * 1024, 8 * 1024, False, 72.3),
            ("unsloth", 8 * 2048, 700, True, 46.3), ("unsloth", 4 * 2048, 350, False, 66.5),
            ("hf", 8 * 1024, 8 * 1024, True, 60.6), ("hf", 4 * 2048, 350, True, 45.8)]


@pytest.mark.parametrize("engine, tokens, labelled, checkpointing, measured", MEASURED)
def test_the_estimate_covers_the_measured_gpt_oss_20b_peaks(gpt_oss_20b, engine, tokens, labelled, checkpointing,
                                                            measured):
    footprint = model_footprint(gpt_oss_20b, tc.TrainConfig(), engine=engine, element_bytes=2)
    assert footprint.trainable_params == 184_909_824  # LoRA r=16 on q/k/v/o and both expert weights
    assert 41e9 < footprint.weight_bytes < 42.5e9  # 20.9 B parameters in bf16
    estimate = footprint.peak(tokens, labelled, checkpointing) / GIB
    assert measured <= estimate <= 1.25 * measured, estimate


def layout_on(config: tc.TrainConfig, gib: float, base: Path, rows_width: int = 2048):
    footprint = model_footprint(base, config, engine="unsloth", element_bytes=2)
    return choose(config, card_bytes=int(gib * GIB), card_name="test card", footprint=footprint,
                  worst=lambda rows: (rows * rows_width, 0))


def test_the_card_decides_the_layout(gpt_oss_20b):
    auto = tc.TrainConfig()
    big, h100 = layout_on(auto, 140, gpt_oss_20b), layout_on(auto, 79.2, gpt_oss_20b)
    assert (big.batch_size, big.grad_accum, big.gradient_checkpointing) == (8, 1, False)
    assert (h100.batch_size, h100.grad_accum, h100.gradient_checkpointing) == (8, 1, True)
    assert "without checkpointing needs" in h100.reason and h100.estimate_gib < h100.usable_gib
    small = layout_on(tc.resolve({}, {"load_in_4bit": True}), 24, gpt_oss_20b)
    assert (small.batch_size, small.grad_accum, small.gradient_checkpointing) == (4, 2, True)
    assert 4 * 2 == small.batch_size * small.grad_accum == tc.ROWS_PER_STEP
    tiny = layout_on(auto, 24, gpt_oss_20b)
    assert tiny.reason.startswith("nothing fits") and (tiny.batch_size, tiny.grad_accum) == (1, 8)


def test_settings_given_explicitly_win(gpt_oss_20b):
    assert candidates(tc.resolve({}, {"batch_size": 4})) == [(4, 2, False), (4, 2, True)]
    assert candidates(tc.resolve({}, {"grad_accum": 4, "gradient_checkpointing": True})) == [(2, 4, True)]
    assert candidates(tc.resolve({}, {"batch_size": 3, "grad_accum": 5})) == [(3, 5, False), (3, 5, True)]
    kept = layout_on(tc.resolve({}, {"gradient_checkpointing": "on"}), 140, gpt_oss_20b)
    assert (kept.batch_size, kept.gradient_checkpointing) == (8, True) and "as given" in kept.reason
    off = layout_on(tc.resolve({}, {"gradient_checkpointing": False}), 79.2, gpt_oss_20b)
    assert (off.batch_size, off.grad_accum, off.gradient_checkpointing) == (2, 4, False)
    cpu = choose(tc.TrainConfig(), card_bytes=None, card_name="CPU", footprint=None, worst=lambda rows: (0, 0))
    assert (cpu.batch_size, cpu.grad_accum, cpu.gradient_checkpointing) == (8, 1, True)


def test_layout_settings_in_files_flags_and_old_configs(tmp_path):
    config = tc.TrainConfig()
    assert (config.batch_size, config.grad_accum, config.gradient_checkpointing) == (0, 0, "auto")
    old = tmp_path / "old.toml"
    old.write_text("[model]\ngradient_checkpointing = true\n[train]\nbatch_size = 4\ngrad_accum = 2\n",
                   encoding="utf-8")
    loaded = tc.resolve(tc.load_toml(old))
    assert (loaded.batch_size, loaded.grad_accum, loaded.gradient_checkpointing) == (4, 2, "on")
    assert "--gradient-checkpointing" in tc.to_cli_args(loaded)
    assert not any("checkpointing" in a for a in tc.to_cli_args(config))  # auto: the flag left out
    assert tc.resolve({}, {"gradient_checkpointing": "false"}).gradient_checkpointing == "off"
    for bad in ({"gradient_checkpointing": "sometimes"}, {"batch_size": -1}, {"profile_steps": -2}):
        with pytest.raises(HaruhiError):
            tc.resolve({}, bad)


def test_speed_figures_of_a_run():
    speed = Throughput(world=4, steps_per_epoch=100, reference=12_000.0)
    for seconds, tokens in [(30.0, 1000), (2.0, 1000), (1.5, 1000)] + [(1.0, 40_000)] * 5 + [(1.0, 44_000)] * 4:
        speed.add(seconds, tokens)
    speed.add(9.0, 44_000, profiled=True)  # a profiled step is slower and left out
    fields = speed.fields()
    assert fields["tokens_per_second_recent"] == 40_000 and fields["tokens_per_second_per_device"] == 10_000
    assert fields["scaling"] == pytest.approx(10_000 / 12_000, abs=1e-3) and fields["epoch_time"] == 100.0
    assert speed.overall() == pytest.approx((5 * 40_000 + 4 * 44_000) / 9, rel=1e-3)  # warm-up steps left out
    assert Throughput(world=1, steps_per_epoch=10, reference=5.0).fields()["scaling"] is None


def test_a_one_gpu_run_becomes_the_reference_of_its_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("HARUHI_HOME", str(tmp_path))
    key = throughput.speed_key(model="gpt-oss-20b", layout=[8, 1, "off"], card="H200")
    one = Throughput(world=1, steps_per_epoch=10)
    for _ in range(4):
        one.add(1.0, 10_000)
    assert throughput.save_reference(key, one, tmp_path) is None and throughput.load_reference(key) is None
    for _ in range(6):
        one.add(0.5, 10_000)
    assert throughput.save_reference(key, one, tmp_path) == 20_000
    assert throughput.load_reference(key) == 20_000 and throughput.load_reference(key + "x") is None
    four = Throughput(world=4, steps_per_epoch=10)
    four.add(1.0, 1)
    assert throughput.save_reference(key, four, tmp_path) is None


def test_the_progress_line_shows_speed_per_gpu_scaling_memory_and_epoch_time():
    record = {"step": 12, "total": 40, "loss": 2.5, "learning_rate": 1e-4, "tokens_per_second": 47_000.0,
              "tokens_per_second_recent": 48_384.0, "tokens_per_second_per_device": 12_096.0, "scaling": 0.86,
              "world_size": 4, "gpu_memory_gb": 54.1, "rank_memory_gb": [53.8, 54.1, 53.9, 54.0],
              "epoch_time": 200.0, "eta": 312.0}
    line = step_line(record)
    for text in ("48,384 tok/s (12,096/GPU, 86% of one GPU)", "53.8-54.1 GiB", "epoch 03:20", "eta 05:12"):
        assert text in line, line
    one = step_line({"step": 1, "total": 2, "loss": None, "tokens_per_second": 9_000.0, "world_size": 1,
                     "gpu_memory_gb": 44.8, "rank_memory_gb": [44.8]})
    assert "9,000 tok/s" in one and "/GPU" not in one and "44.8 GiB" in one
