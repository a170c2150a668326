"""benchmarks/bench_decode.py runs to the end on the CPU with the bundled model (its GPU figures are the lead's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_decode_cpu_run_writes_cold_and_warm_turns(characters_dir, tmp_path):
    out = tmp_path / "decode"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_decode.py"), "--n-gpu-layers", "0",
                           "--turns", "2", "--max-tokens", "8", "--n-ctx", "2048", "--characters", str(characters_dir),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    first, second = record["turns"]
    assert first["reused_tokens"] <= 1 < first["prompt_tokens"]  # cold: the persona prompt is evaluated
    assert second["reused_tokens"] > first["prompt_tokens"] // 2  # warm: the prefix comes from the KV cache
    assert record["summary"]["warm_first_token_ms_median"] == second["first_token_ms"]
    assert record["model"]["n_gpu_layers"] == 0 and record["versions"]["llama_cpp_python"]
    assert "| 2 |" in out.with_suffix(".md").read_text(encoding="utf-8")
