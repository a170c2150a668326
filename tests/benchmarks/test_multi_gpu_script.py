"""benchmarks/gpu/multi_gpu.sh and its figures, without a GPU: the commands each stage would run (--dry-run),
and multi_gpu_stats.py on the events.jsonl of real CPU runs (one process and two)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from haruhi_tui.core.events import read_events
from trainer import train_config as tc

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu" / "multi_gpu.sh"
STATS = ROOT / "benchmarks" / "gpu" / "multi_gpu_stats.py"


def dry_run(stage: str, tmp_path: Path) -> str:
    env = {**os.environ, "HARUHI_MG_DIR": str(tmp_path / "mg"), "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", stage], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "mg").exists() and not (tmp_path / "out").exists()  # a dry run writes nothing
    return done.stdout


def test_each_stage_runs_the_measurements_it_names(tmp_path):
    single = dry_run("single", tmp_path)
    assert "pip install" in single and "data build" in single and "prepare_base" in single
    lines = [line for line in single.splitlines() if "haruhi_tui.cli train" in line]
    assert len(lines) == 3
    one, old, two = (next(line for line in lines if f"runs/{name}.cwd" in line)
                     for name in ("default-1gpu", "old-1gpu", "default-2gpu"))
    assert "CUDA_VISIBLE_DEVICES=0 " in one and "--profile-steps 2" in one and "--gpus" not in one
    assert "--batch-size" not in one and "checkpointing" not in one  # the default recipe: layout left to auto
    assert "CUDA_VISIBLE_DEVICES=1 " in old and "--batch-size 4 --grad-accum 2 --gradient-checkpointing" in old
    assert "CUDA_VISIBLE_DEVICES=2,3 " in two and "--gpus 2" in two

    four = dry_run("four", tmp_path)
    run, resume, evaluate = (next(line for line in four.splitlines() if key in line)
                             for key in ("--save-steps 8", "--resume", "eval --model"))
    assert "--gpus 4" in run and "--max-steps 20" in run and "--profile-steps 2" in run
    assert "--gpus 4" in resume and "--adapter" in evaluate and "--limit 6" in evaluate
    assert "--gpus 4" in dry_run("old4", tmp_path) and "--gradient-checkpointing" in dry_run("gc", tmp_path)
    text = SCRIPT.read_text(encoding="utf-8")
    for setting in ("NCCL_NVLS_ENABLE=0", "TORCH_SYMM_MEM_DISABLE_MULTICAST=1", "NVSHMEM_DISABLE_NVLS=1"):
        assert setting in text


@pytest.mark.slow
def test_figures_from_the_events_of_cpu_runs(tiny_gpt_oss, tmp_path):
    from tiny_dataset import write_dataset

    dataset = write_dataset(tmp_path / "train.json", copies=40)
    runs = tmp_path / "runs"
    common = dict(base=str(tiny_gpt_oss), dataset=str(dataset), max_length=256, batch_size=2, grad_accum=1,
                  learning_rate=5e-3, warmup_ratio=0.0, max_steps=7, save_steps=3)
    for name, extra in (("one", ["--profile-steps", "1"]), ("two", ["--gpus", "2", "--cpu-processes"])):
        config = tc.resolve({}, {**common, "output": str(runs / name)})
        done = subprocess.run([sys.executable, "-m", "haruhi_tui.cli", "train", *tc.to_cli_args(config), *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(STATS), "--warmup", "1", "--out", str(out), str(runs / "one"),
                           str(runs / "two")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text(encoding="utf-8"))
    one, two = figures["runs"]
    steps = {r["step"]: r for r in read_events(runs / "one")[0] if r["event"] == "step"}
    profiled = [s for s, r in steps.items() if r.get("profiled")]
    assert profiled == [6]  # PROFILE_WARMUP 5, then one step
    # after the warm-up step; not the profiled step nor the steps that carry a checkpoint save (after 3 and 6)
    assert one["measured_steps"] == [2, 3, 5] and two["measured_steps"] == [2, 3, 5, 6]
    assert one["tokens_per_second_median"] == round(statistics.median(steps[s]["tokens_per_second"]
                                                                     for s in (2, 3, 5)), 1)
    assert one["layout"] == two["layout"] == {"batch_size": 2, "grad_accum": 1, "gradient_checkpointing": True}
    assert (one["world_size"], two["world_size"]) == (1, 2) and one["status"] == two["status"] == "completed"
    # both rounded to 0.1 from the unrounded median: they agree within one rounding step
    assert two["tokens_per_second_per_gpu_median"] == pytest.approx(two["tokens_per_second_median"] / 2, abs=0.1)
    assert one["epoch_minutes"] > 0 and one["profiles"]["profile-rank0"]["steps"] == 1
    (scaling,) = figures["scaling"]
    assert scaling["reference"] == "one" and scaling["scaling_median"] == round(
        two["tokens_per_second_per_gpu_median"] / one["tokens_per_second_median"], 3)

    wait = [sys.executable, str(STATS), "--wait", str(runs / "two"), "--timeout", "30"]
    assert subprocess.run(wait + ["--checkpoint", "3", "--step", "4"], cwd=ROOT, timeout=60).returncode == 0
    assert subprocess.run(wait + ["--checkpoint", "30", "--step", "31"], cwd=ROOT, timeout=60).returncode == 1
