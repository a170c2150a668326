"""The training recipe: defaults, TOML file, flags, --print-config, resume rules (no model needed)."""

from __future__ import annotations

import tomllib

import pytest
from typer.testing import CliRunner

from haruhi_tui.cli import app
from haruhi_tui.core.errors import HaruhiError
from trainer import train_config as tc
from trainer.train_loop import resume_config


def test_defaults_are_the_reference_recipe():
    config = tc.TrainConfig().validate()
    assert (config.base, config.lora_r, config.lora_alpha, config.lora_dropout) == ("openai/gpt-oss-20b", 16, 32, 0.0)
    assert config.lora_targets == ["attention", "mlp"]
    assert (config.learning_rate, config.lr_scheduler, config.max_length) == (1e-4, "cosine", 2048)
    assert 1 <= config.epochs <= 3 and config.dataset == "data/haruhi_train.json"


def test_toml_round_trip_and_flags_override_the_file(tmp_path):
    config = tc.resolve({}, {"lora_r": 8, "lora_targets": "attention", "output": "runs/x",
                             "gradient_checkpointing": False})
    path = tmp_path / "train.toml"
    tc.save(config, path)
    assert tc.resolve(tc.load_toml(path)) == config
    again = tc.resolve(tc.load_toml(path), {"lora_r": 32, "learning_rate": 3e-4})
    assert (again.lora_r, again.learning_rate, again.lora_targets, again.gradient_checkpointing) == (
        32, 3e-4, ["attention"], "off")
    flat = tmp_path / "flat.toml"
    flat.write_text('base = "some/model"\n[lora]\nlora_alpha = 64\n', encoding="utf-8")
    assert (tc.resolve(tc.load_toml(flat)).base, tc.resolve(tc.load_toml(flat)).lora_alpha) == ("some/model", 64)


@pytest.mark.parametrize("text, message", [
    ("[lora]\nrank = 4\n", "unknown setting 'rank'"),
    ("[nope]\nx = 1\n", "unknown section [nope]"),
    ("[train]\nbatch_size = \"big\"\n", "batch_size is a whole number"),
    ("[model]\nengine = \"vllm\"\n", "--engine must be one of auto, unsloth, hf"),
    ("[output]\nkeep_checkpoints = 1\n", "--keep-checkpoints is 0"),
    ("[train]\nepochs = \n", "not valid TOML"),
])
def test_bad_config_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(HaruhiError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tc.resolve(tc.load_toml(path))


def test_print_config_shows_the_resolved_settings(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('[train]\nlearning_rate = 0.0003\nepochs = 1\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--lr", "2e-4", "--lora-r", "8",
                                      "--no-gradient-checkpointing", "--print-config"])
    assert result.exit_code == 0, result.output
    printed = tomllib.loads(result.output)
    assert printed["train"]["learning_rate"] == 2e-4 and printed["train"]["epochs"] == 1.0
    assert printed["lora"]["lora_r"] == 8 and printed["model"]["gradient_checkpointing"] == "off"
    assert "here: cpu" in result.output  # what "auto" means on this machine


def test_help_explains_the_defaults_and_multi_gpu():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("openai/gpt-oss-20b", "--gpus", "--nnodes", "--master-addr", "--resume", "--print-config",
                 "[default: 16]", "--cpu-processes"):
        assert text in result.output


def test_resume_keeps_the_settings_that_fix_data_and_model(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    tc.save(tc.resolve({}, {"output": str(out), "lora_r": 8, "max_steps": 10}), out / tc.CONFIG_FILE)
    longer = resume_config({}, {"output": str(out), "max_steps": 20})
    assert (longer.lora_r, longer.max_steps) == (8, 20)
    with pytest.raises(HaruhiError, match="different --lora-r"):
        resume_config({}, {"output": str(out), "lora_r": 16})
