"""Data-parallel training on CPU processes (torchrun, gloo), the way ``haruhi train --gpus N`` runs on GPUs.

One gradient all-reduce per optimizer step (the micro-batches before the last run under ``no_sync``), every
process gets the same shapes and about the same tokens at every micro-batch, every sequence is trained once
per epoch, and a resumed run trains exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from haruhi_tui.core.events import read_events
from trainer import train_config as tc
from trainer.batch_plan import plan_batches
from trainer.launch import launch_env

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support"


@pytest.fixture(scope="module")
def varied_dataset(characters_dir, tmp_path_factory) -> Path:
    """haruhi_train.json of two real characters (short prompts): samples of many lengths."""
    from haruhi_tui.core.dataset import BuildOptions, build, write
    from haruhi_tui.core.persona import PromptBudget

    result = build(characters_dir, BuildOptions(max_turns=4, budget=PromptBudget(scenes=0, max_scenes=0)),
                   only=["haruhi", "Luna"])
    return write(result, tmp_path_factory.mktemp("varied"))["haruhi_train"]


def settings(base: Path, dataset: Path, output: Path, **values) -> tc.TrainConfig:
    fixed = dict(base=str(base), dataset=str(dataset), output=str(output), max_length=256, batch_size=2,
                 grad_accum=1, max_samples=24, learning_rate=5e-3, warmup_ratio=0.0, save_steps=100)
    return tc.resolve({}, {**fixed, **values})


def haruhi_train(config: tc.TrainConfig, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "haruhi_tui.cli", "train", *tc.to_cli_args(config), "--gpus", "2", "--cpu-processes",
           *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    log_file = config.output_dir / "train.log"
    log = log_file.read_text(errors="replace") if log_file.exists() else ""
    assert done.returncode == 0, done.stderr[-3000:] + log[-3000:]
    return done


@pytest.mark.slow
def test_only_the_last_micro_batch_of_a_step_all_reduces_gradients(tiny_gpt_oss, varied_dataset, tmp_path):
    out = tmp_path / "probe"
    config = settings(tiny_gpt_oss, varied_dataset, out, batch_size=1, grad_accum=3, max_steps=3)
    out.mkdir()
    tc.save(config, out / tc.CONFIG_FILE)
    env = launch_env(cpu=True)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SUPPORT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                           str(SUPPORT / "ddp_probe.py"), str(out / tc.CONFIG_FILE), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in (0, 1):
        probe = json.loads((out / f"probe-rank{rank}.json").read_text(encoding="utf-8"))
        assert probe["ddp"]["gradient_as_bucket_view"] and not probe["ddp"]["find_unused_parameters"]
        syncs = [m["syncs"] for m in probe["micro_batches"]]
        assert syncs == [False, False, True] * 3, syncs  # no_sync on the first two micro-batches of every step
        last_of_step = {3, 6, 9}
        assert probe["all_reduces"] and set(probe["all_reduces"]) == last_of_step, probe["all_reduces"]
        per_step = [probe["all_reduces"].count(m) for m in sorted(last_of_step)]
        assert len(set(per_step)) == 1, per_step  # the same buckets every step, once
    steps = [r for r in read_events(out)[0] if r["event"] == "step"]
    assert [s["step"] for s in steps] == [1, 2, 3] and all(len(s["rank_tokens"]) == 2 for s in steps)


@pytest.mark.slow
def test_two_processes_train_the_plan_and_a_resumed_run_continues_it(tiny_gpt_oss, varied_dataset, tmp_path):
    """Every step's tokens on each process are what the batch plan says: balanced, every sequence once per
    epoch, a new order each epoch, and after --resume (mid-epoch, then into the next epoch) the same order."""
    from transformers import AutoTokenizer

    from trainer.train_loop import prepare_sequences

    out = tmp_path / "ddp"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_gpt_oss))
    config = settings(tiny_gpt_oss, varied_dataset, out, save_steps=3)
    sequences, _ = prepare_sequences(config, tokenizer, "harmony")
    plan = plan_batches(sequences, "packed", 2, config.max_length, config.seed, world=2)
    per_epoch = len(plan.rounds)
    assert per_epoch >= 3

    def expected(step: int) -> list[int]:
        epoch, k = divmod(step - 1, per_epoch)
        return plan.rank_tokens(plan.epoch_order(epoch)[k])

    first_stop, last = per_epoch + 2, 2 * per_epoch + 1  # the resume starts inside the second epoch
    haruhi_train(settings(tiny_gpt_oss, varied_dataset, out, save_steps=3, max_steps=first_stop))
    done = haruhi_train(settings(tiny_gpt_oss, varied_dataset, out, save_steps=3, max_steps=last), "--resume")
    assert f"trained {last} steps" in done.stdout

    records = read_events(out)[0]
    starts = [r for r in records if r["event"] == "start"]
    assert [s["resumed_from"] for s in starts] == [None, first_stop]
    assert starts[0]["config"]["resolved"]["world_size"] == 2 and starts[0]["config"]["resolved"]["packing"] == "packed"
    steps = [r for r in records if r["event"] == "step"]
    assert [s["step"] for s in steps] == list(range(1, last + 1))
    for record in steps:
        assert record["rank_tokens"] == expected(record["step"]), record["step"]
        assert record["world_size"] == 2 and record["rank_memory_gb"] == [None, None]
    details = next(r for r in records if r.get("message") == "details")
    assert details["plan"]["rounds"] == per_epoch and details["layout"]["batch_size"] == 2

    with pytest.raises(subprocess.CalledProcessError):  # its data order depends on the process count
        subprocess.run([sys.executable, "-m", "haruhi_tui.cli", "train", "--resume", "--output", str(out),
                        "--max-steps", str(last + 2)], cwd=ROOT, capture_output=True, text=True, check=True,
                       timeout=300)
    assert "resume it with --gpus 2" in read_events(out)[0][-2]["message"]
