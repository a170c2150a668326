"""benchmarks/bench_eval.py on the CPU with a tiny gpt-oss (its GPU figures are the lead's): saved prompts, the
old and the new engine in one run, the figures each reports, the profile table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_eval.py"


def _bench(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(BENCH), *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_bench_eval_runs_old_and_new_engine_on_saved_prompts(characters_dir, tmp_path):
    from haruhi_tui.core.dataset import BuildOptions, build, write
    from haruhi_tui.core.persona import PromptBudget

    result = build(characters_dir, BuildOptions(max_turns=4, budget=PromptBudget(scenes=0, max_scenes=0)),
                   only=["Luna", "haruhi"])
    dataset = write(result, tmp_path / "data")["haruhi_val"]
    prompts = tmp_path / "prompts.jsonl.gz"
    assert "saved" in _bench("--dataset", str(dataset), "--save-prompts", str(prompts)).stdout
    out = tmp_path / "bench.jsonl"
    _bench("--prompts", str(prompts), "--shape", "tiny", "--layers", "2", "--device", "cpu", "--samples", "10",
           "--max-new-tokens", "6", "--paths", "old,new,new-noshare", "--profile", "--profile-samples", "2",
           "--out", str(out))
    runs = {r["path"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert list(runs) == ["old", "new", "new-noshare"] and not any("error" in r for r in runs.values())
    old, new, unshared = runs["old"], runs["new"], runs["new-noshare"]
    for run in runs.values():
        assert run["samples"] == 10 and run["samples_per_second"] > 0 and run["shape"] == "tiny"
        assert 10 <= run["generated_tokens"] <= 60 and run["prompt_tokens"] == old["prompt_tokens"]
        assert run["prefill_seconds"] > 0 and run["decode_steps"] > 0 and "aten::" in run["profile"]
    assert new["generated_tokens"] == old["generated_tokens"] == unshared["generated_tokens"]
    assert old["engine"] == "batched" and old["prefill_tokens_computed"] >= old["prefill_tokens_real"]
    assert new["engine"] == "continuous" and new["attention_kernel"] == "reference" and not new["cuda_graphs"]
    assert new["prefill_tokens_computed"] + new["prefill_tokens_shared"] == new["prompt_tokens"]
    assert 0 < new["prefill_tokens_shared"] and unshared["prefill_tokens_shared"] == 0
    assert unshared["prefill_tokens_computed"] == unshared["prompt_tokens"] > new["prefill_tokens_computed"]
    assert new["decode_rows_computed"] >= new["generated_tokens"] - new["samples"]
