"""benchmarks/bench_train.py runs to the end on CPU with the tiny model (its GPU figures are the lead's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_train_cpu_smoke_run_writes_its_report(harmony_tokenizer_dir, tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--device", "cpu", "--tiny",
                           "--workloads", "synthetic", "--steps", "1", "--warmup", "1", "--profile-steps", "1",
                           "--tokenizer", str(harmony_tokenizer_dir), "--scratch", str(tmp_path / "scratch"),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    (row,) = record["results"]
    assert row["engine"] == "hf" and row["workload"] == "synthetic" and row["status"] == "completed"
    assert row["tokens_per_second_median"] > 0 and row["real_token_share"] == 1.0 and row["batch"] == 2
    assert "transformers" in record["versions"] and "bench_train.py --device cpu --tiny" in record["command"]
    assert "| hf | synthetic |" in out.with_suffix(".md").read_text(encoding="utf-8")
    # the profile of the measured step: kernel time per group, and the top kernels in its text file
    assert row["profile"]["steps"] == 1 and row["profile"]["gpu_kernel_seconds_per_step"] > 0
    assert row["profile"]["gpu_seconds_per_step_by_group"]
    table = Path(f"{out}-profile-hf-synthetic.txt").read_text(encoding="utf-8")
    assert "calls/step" in table and "aten::" in table
