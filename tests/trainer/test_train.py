"""``haruhi train`` end to end with real training steps on CPU: the tiny real gpt-oss and Gemma 3 270M.

Loss goes down, the adapter loads back and has learned, events.jsonl tells the whole story, Ctrl-C
saves and stops, kill -9 resumes where the last checkpoint left off, two CPU processes train together
through torchrun, and bad input gets a one-line error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from haruhi_tui.cli import app
from haruhi_tui.core.events import job_state, read_events
from trainer import train_config as tc
from trainer.run_state import CHECKPOINT_MARKER, latest_checkpoint
from trainer.train_loop import run_training

ROOT = Path(__file__).resolve().parents[2]
STEP_FIELDS = ("step", "total", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second",
               "real_token_share", "elapsed", "eta", "gpu_memory_gb")
PERSONA = "你是凉宫春日,SOS团的团长。"
EXCHANGES = [("阿虚:「今天的社团活动做什么?」", "当然是寻找外星人、未来人和超能力者!"),
             ("阿虚:「你又在打什么主意?」", "SOS团要举办一场大冒险,你必须参加!")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """One scene, repeated: a tiny random model learns it in a few steps."""
    messages = [{"from": "system", "value": PERSONA}]
    for user, reply in EXCHANGES:
        messages += [{"from": "user", "value": user}, {"from": "assistant", "value": reply}]
    path = tmp_path_factory.mktemp("train_data") / "haruhi_train.json"
    path.write_text(json.dumps([{"conversations": messages, "character": "春日"}] * 8, ensure_ascii=False),
                    encoding="utf-8")
    return path


def config_for(base: Path, dataset: Path, output: Path, **values) -> tc.TrainConfig:
    settings = dict(base=str(base), dataset=str(dataset), output=str(output), max_length=256, batch_size=2,
                    grad_accum=1, learning_rate=5e-3, warmup_ratio=0.0, save_steps=100)
    settings.update(values)
    return tc.resolve({}, settings)


def cli_args(config: tc.TrainConfig) -> list[str]:
    return tc.to_cli_args(config)


def haruhi(*args: str) -> list[str]:
    return [sys.executable, "-m", "haruhi_tui.cli", *args]


def events_of(output: Path) -> list[dict]:
    records, _ = read_events(output)
    assert (output / "events.jsonl").read_text(encoding="utf-8").endswith("\n")
    return records


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"training exited early ({proc.returncode}): {err[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("timed out waiting for training progress")


def reply_nll(model, tokenizer, text_before: str, reply: str) -> float:
    """Mean negative log-likelihood of ``reply`` after the harmony prompt ``text_before``."""
    prompt = tokenizer(text_before, add_special_tokens=False)["input_ids"]
    target = tokenizer(reply, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
    return float(torch.nn.functional.cross_entropy(logits.float(), torch.tensor(target)))


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_an_adapter_that_learned(tiny_gpt_oss, dataset, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from haruhi_tui.core import harmony

    out = tmp_path / "run"
    config = config_for(tiny_gpt_oss, dataset, out, max_steps=8, save_steps=3)
    result = run_training(config)
    assert result.status == "completed" and result.steps == 8

    records = events_of(out)
    kinds = [r["event"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("start") == 1
    start, end = records[0], records[-1]
    assert start["total"] == 8 and start["unit"] == "step" and start["resumed_from"] is None
    assert start["config"]["lora_r"] == 16 and start["config"]["resolved"]["packing"] == "packed"
    steps = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 9))
    for record in steps:
        assert all(name in record for name in STEP_FIELDS), record
        assert record["tokens_per_second"] > 0 and 0.5 < record["real_token_share"] <= 1.0
    assert [r["step"] for r in records if r["event"] == "checkpoint"] == [3, 6, 8]
    assert end["status"] == "completed" and end["metrics"]["steps"] == 8
    losses = [r["loss"] for r in steps]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, losses
    state = job_state(out)
    assert state.status == "completed" and state.done == 8 and len(state.losses) == 8

    adapter = Path(end["outputs"]["adapter"])
    assert adapter == out / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "train_config.toml"):
        assert (adapter / name).is_file(), name
    adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    assert set(adapter_config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert set(adapter_config["target_parameters"]) == {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
    assert adapter_config["base_model_name_or_path"] == str(tiny_gpt_oss.resolve())

    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_gpt_oss), dtype=torch.float32, attn_implementation="eager")
    prompt = harmony.render(PERSONA, [("user", EXCHANGES[0][0])]) + "<|channel|>final<|message|>"
    before = reply_nll(base, tokenizer, prompt, EXCHANGES[0][1])
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    after = reply_nll(tuned, tokenizer, prompt, EXCHANGES[0][1])
    assert after < before - 1.0, (before, after)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_kill_9_resumes_where_it_left_off(tiny_gpt_oss, dataset, tmp_path):
    out = tmp_path / "run"
    config = config_for(tiny_gpt_oss, dataset, out, max_steps=10, save_steps=3)
    events = out / "events.jsonl"

    def seen(kind: str, at_least: int, after_start: int = 1) -> bool:
        records = [r for r in read_events(out)[0]] if events.exists() else []
        starts = [i for i, r in enumerate(records) if r["event"] == "start"]
        if len(starts) < after_start:
            return False
        tail = records[starts[after_start - 1]:]
        return any(r["event"] == kind and r.get("step", 0) >= at_least for r in tail)

    # 1. Ctrl-C during training: the step in flight finishes, a checkpoint is saved, status cancelled.
    first = subprocess.Popen(haruhi("train", *cli_args(config)), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for(lambda: seen("step", 1), first)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert "Traceback" not in err and "cancelled" in err.strip().splitlines()[-1] and "--resume" in err
    records = events_of(out)
    end = records[-1]
    assert end["event"] == "end" and end["status"] == "cancelled"
    stopped_at = end["metrics"]["steps"]
    assert 1 <= stopped_at < 7 and (out / f"checkpoint-{stopped_at}" / CHECKPOINT_MARKER).is_file()
    assert records[-2]["event"] == "checkpoint" and records[-2]["step"] == stopped_at

    # 2. Resume, then kill -9 once the next regular checkpoint is written and training went on.
    second = subprocess.Popen(haruhi("train", "--resume", "--output", str(out)), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    next_save = (stopped_at // 3 + 1) * 3
    wait_for(lambda: seen("checkpoint", next_save, 2) and seen("step", next_save + 1, 2), second)
    second.kill()
    second.communicate()
    killed_after = latest_checkpoint(out)[0]  # the newest complete checkpoint when the process died
    assert killed_after >= next_save and not (out / "adapter").exists()

    # 3. Resume again in this process: the count continues from the last complete checkpoint.
    result = run_training(tc.resolve(tc.load_toml(out / tc.CONFIG_FILE)), resume=True)
    assert result.status == "completed" and result.steps == 10
    records = events_of(out)
    starts = [r for r in records if r["event"] == "start"]
    assert [s["resumed_from"] for s in starts] == [None, stopped_at, killed_after]
    last_run = records[records.index(starts[-1]):]
    assert [r["step"] for r in last_run if r["event"] == "step"] == list(range(killed_after + 1, 11))
    assert last_run[-1]["event"] == "end" and last_run[-1]["status"] == "completed"
    state = job_state(out)  # one loss curve, each step once, despite the redone steps
    assert [s for s, _ in state.losses] == list(range(1, 11)) and state.status == "completed"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_two_cpu_processes_train_one_model_through_torchrun(tiny_gpt_oss, dataset, tmp_path):
    out = tmp_path / "ddp"
    config = config_for(tiny_gpt_oss, dataset, out, max_steps=2, batch_size=1, save_steps=2)
    done = subprocess.run(haruhi("train", *cli_args(config), "--gpus", "2", "--cpu-processes"), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + (out / "train.log").read_text(errors="replace")[-3000:]
    records = events_of(out)
    start = next(r for r in records if r["event"] == "start")
    assert start["config"]["resolved"]["world_size"] == 2 and start["pid"] != os.getpid()
    assert [r["step"] for r in records if r["event"] == "step"] == [1, 2]
    assert records[-1]["event"] == "end" and records[-1]["status"] == "completed"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "trained 2 steps" in done.stdout


@pytest.mark.slow
def test_gemma_3_270m_base_trains_on_the_play_script(gemma_hf, dataset, tmp_path):
    from transformers import AutoTokenizer

    from haruhi_tui.core.sharegpt import resolve_dataset
    from trainer.train_data import PromptRenderer, conversation_of

    tokenizer = AutoTokenizer.from_pretrained(str(gemma_hf))
    encoded = PromptRenderer(tokenizer, "script", use_template=False).encode(
        conversation_of(resolve_dataset(str(dataset))[0]))
    assert encoded.input_ids[0] == tokenizer.bos_token_id and encoded.input_ids[1] != tokenizer.bos_token_id

    out = tmp_path / "gemma"
    config = config_for(gemma_hf, dataset, out, max_steps=2, batch_size=1, max_samples=2, max_length=96,
                        learning_rate=1e-3, lora_r=8, lora_alpha=16, gradient_checkpointing=False)
    result = run_training(config)
    records = events_of(out)
    start = records[0]
    resolved = start["config"]["resolved"]
    assert resolved["style"] == "script" and resolved["model_type"] == "gemma3_text"
    losses = [r["loss"] for r in records if r["event"] == "step"]
    assert result.status == "completed" and len(losses) == 2 and losses[-1] < losses[0]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_bad_input_gets_one_line_errors(tiny_gpt_oss, dataset, tmp_path):
    runner = CliRunner()
    base = ["train", "--base", str(tiny_gpt_oss), "--max-steps", "1"]

    missing = one_line_error(runner.invoke(app, base + ["--dataset", str(tmp_path / "nope.json"),
                                                        "-o", str(tmp_path / "a")]))
    assert "dataset not found" in missing
    records = read_events(tmp_path / "a")[0]
    assert [r["event"] for r in records] == ["error", "end"] and records[-1]["status"] == "failed"

    (tmp_path / "empty.json").write_text("[]", encoding="utf-8")
    assert "empty" in one_line_error(runner.invoke(app, base + ["--dataset", str(tmp_path / "empty.json"),
                                                                "-o", str(tmp_path / "b")]))
    no_reply = [{"conversations": [{"from": "user", "value": "在吗?"}]}]
    (tmp_path / "no_reply.json").write_text(json.dumps(no_reply), encoding="utf-8")
    assert "assistant" in one_line_error(runner.invoke(app, base + ["--dataset", str(tmp_path / "no_reply.json"),
                                                                    "-o", str(tmp_path / "c")]))
    (tmp_path / "not_a_model").mkdir()
    assert "not a Hugging Face checkpoint" in one_line_error(runner.invoke(
        app, ["train", "--base", str(tmp_path / "not_a_model"), "--dataset", str(dataset), "-o", str(tmp_path / "d")]))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert "GGUF" in one_line_error(runner.invoke(
        app, ["train", "--base", str(tmp_path / "model.gguf"), "--dataset", str(dataset), "-o", str(tmp_path / "e")]))
    assert "this machine has no CUDA GPU" in one_line_error(runner.invoke(
        app, base + ["--dataset", str(dataset), "--gpus", "2", "-o", str(tmp_path / "f")]))
    assert "--lora-dropout must be 0" in one_line_error(runner.invoke(
        app, base + ["--dataset", str(dataset), "--lora-dropout", "0.1", "-o", str(tmp_path / "g")]))
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "events.jsonl").write_text("", encoding="utf-8")
    assert "--resume" in one_line_error(runner.invoke(app, base + ["--dataset", str(dataset),
                                                                   "-o", str(tmp_path / "h")]))


def test_out_of_memory_is_explained_not_dumped():
    from trainer.train_loop import _explain

    config = tc.TrainConfig()
    message = _explain(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB"), config)
    assert message.startswith("out of GPU memory") and "--batch-size" in message and "--load-in-4bit" in message
    assert _explain(ValueError("a bug"), config) is None
