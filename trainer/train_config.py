"""The training recipe: one table of settings that drives the TOML file, the CLI flags and ``--print-config``.

Every setting has a TOML section, a flag and a help line here, so ``haruhi train --help``, a config file
and the resolved config written to ``<output>/train_config.toml`` can never disagree. Flags override the
file; the file overrides the defaults. The defaults reproduce the reference run (gpt-oss-20b, LoRA r=16
alpha=32 on attention and the MoE experts, lr 1e-4 cosine, 3 epochs, 2048-token sequences, haruhi_train).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import write_text

CONFIG_FILE = "train_config.toml"

ENGINES = ("auto", "unsloth", "hf")
DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTIONS = ("auto", "eager", "sdpa", "flex_attention")
TEMPLATES = ("auto", "model", "haruhi")
PACKINGS = ("auto", "packed", "grouped")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
OPTIMIZERS = ("auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "sgd")
EFFORTS = ("low", "medium", "high")
SWITCHES = ("auto", "on", "off")
#: Rows per optimizer step per device when --batch-size and --grad-accum are left to auto (the reference recipe's
#: 4 rows x 2 micro-batches): 8 x 1 where the card holds it, else 4 x 2, 2 x 4, 1 x 8 (trainer.step_layout).
ROWS_PER_STEP = 8


def _setting(default: Any, section: str, help: str, choices: tuple[str, ...] | None = None, flag: str | None = None,
             switch: bool = False):
    """One setting. ``switch``: an auto/on/off setting, given on the command line as ``--name/--no-name``."""
    meta = {"section": section, "help": help, "choices": choices, "flag": flag, "switch": switch}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything one training run needs. Field order is the order of ``--print-config``."""

    # [model]
    base: str = _setting("openai/gpt-oss-20b", "model",
                         "Base model: a local Hugging Face checkpoint folder (config.json + *.safetensors) or a hub "
                         "id, downloaded with progress when online.")
    engine: str = _setting("auto", "model", "unsloth (CUDA only, fastest), hf (transformers + PEFT, any device) or "
                           "auto: unsloth when CUDA and Unsloth are available, else hf.", ENGINES)
    device: str = _setting("auto", "model", "cuda, cpu, or auto (cuda when available).", DEVICES)
    dtype: str = _setting("auto", "model", "Weight dtype: auto is bfloat16 on CUDA, float32 on CPU.", DTYPES)
    load_in_4bit: bool = _setting(False, "model", "Load the frozen base in 4 bits (QLoRA; CUDA only). "
                                  "Default: bf16 base, which the 80 GB cards hold for gpt-oss-20b.")
    attention: str = _setting("auto", "model", "Attention kernel for the hf engine: auto is flex_attention for "
                              "gpt-oss on CUDA, eager for gpt-oss on CPU, sdpa otherwise.", ATTENTIONS)
    gradient_checkpointing: str = _setting("auto", "model", "Recompute activations in the backward pass (less "
                                           "memory, about a third more compute): on, off, or auto: off where the "
                                           "card's memory holds the step without it (see --batch-size).", SWITCHES,
                                           switch=True)
    template: str = _setting("auto", "model", "gpt-oss prompts: 'haruhi' renders with our harmony renderer, the "
                             "prompt chat and eval build too; 'model' with the checkpoint's own chat template (its "
                             "system message differs: ChatGPT identity, dates). auto = haruhi.", TEMPLATES)
    reasoning_effort: str = _setting("low", "model", "Reasoning effort written in the harmony system message.", EFFORTS)
    # [data]
    dataset: str = _setting("data/haruhi_train.json", "data",
                            "Training data: a ShareGPT .json/.jsonl (e.g. haruhi_train.json from `haruhi data build`) "
                            "or DIR:NAME for a LLaMA-Factory dataset_info.json entry.")
    max_length: int = _setting(2048, "data", "Longest sequence in tokens. Longer samples are split between turns; "
                               "a single turn that is still too long is cut.")
    packing: str = _setting("auto", "data", "packed: several samples per row, attention kept inside each sample; "
                            "grouped: one sample per row, samples of similar length batched together; auto: packed "
                            "where the engine's attention honours sample boundaries (hf, checked on the loaded model), "
                            "else grouped (unsloth).",
                            PACKINGS)
    max_samples: int = _setting(0, "data", "Use only the first N samples (0 = all); for quick trials.")
    # [lora]
    lora_r: int = _setting(16, "lora", "LoRA rank.")
    lora_alpha: int = _setting(32, "lora", "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = _setting(0.0, "lora", "LoRA dropout; must be 0 when the MoE experts are targets.")
    lora_targets: list = _setting(["attention", "mlp"], "lora",
                                  "Comma-separated: 'attention' (q/k/v/o), 'mlp' (the MoE experts' gate_up_proj and "
                                  "down_proj on gpt-oss, gate/up/down on dense models), or module names.")
    # [train]
    epochs: float = _setting(3.0, "train", "Passes over the dataset (ignored when --max-steps is set).")
    max_steps: int = _setting(0, "train", "Stop after this many optimizer steps (0 = use --epochs).")
    batch_size: int = _setting(0, "train", "Rows per device per micro-batch (a packed row holds several samples, up "
                               "to --max-length tokens; a grouped row holds one sample). 0 = auto: 8 rows x 1 "
                               "micro-batch where the GPU's memory holds it, else 4 x 2, 2 x 4 or 1 x 8 (8 rows per "
                               "optimizer step either way); the log says which ran and why.")
    grad_accum: int = _setting(0, "train", "Micro-batches per optimizer step. 0 = auto: 8 rows per step in all "
                               "(with --batch-size 4: 2).")
    learning_rate: float = _setting(1e-4, "train", "Peak learning rate.", flag="--lr")
    lr_scheduler: str = _setting("cosine", "train", "Learning-rate schedule after warm-up.", SCHEDULERS)
    warmup_ratio: float = _setting(0.03, "train", "Share of the steps spent warming the learning rate up.")
    weight_decay: float = _setting(0.0, "train", "AdamW weight decay.")
    max_grad_norm: float = _setting(1.0, "train", "Gradient clipping norm (0 = off).")
    optimizer: str = _setting("auto", "train", "auto is adamw_torch_fused on CUDA, adamw_torch on CPU.", OPTIMIZERS)
    seed: int = _setting(42, "train", "Seed of LoRA init, data order and packing.")
    # [output]
    output: str = _setting("runs/haruhi-lora", "output", "Output folder: checkpoints, events.jsonl, the final "
                           "adapter in <output>/adapter.", flag="--output")
    save_steps: int = _setting(200, "output", "Save a checkpoint every N steps (and always at the end and on Ctrl-C).")
    keep_checkpoints: int = _setting(2, "output", "Checkpoints kept on disk (at least 2, so a kill during a save "
                                     "always leaves a complete one; 0 = keep all).")
    profile_steps: int = _setting(0, "output", "Profile this many steps after the warm-up on every process "
                                  "(torch.profiler): where a step's time goes, in OUTPUT/profile-rankN.txt. 0 = off.")

    # -- derived -----------------------------------------------------------------------------------

    @property
    def output_dir(self) -> Path:
        return Path(self.output)

    @property
    def checkpointing(self) -> bool:
        """Whether activations are recomputed; a config whose step layout is resolved says on or off."""
        return self.gradient_checkpointing != "off"

    def warmup_steps(self, total_steps: int) -> int:
        return math.ceil(self.warmup_ratio * total_steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> "TrainConfig":
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise HaruhiError(f"{flag_of(f.name)} must be one of {', '.join(choices)}, not {value!r}")
        positive = {"max_length": 16, "lora_r": 1, "lora_alpha": 1, "save_steps": 1}
        for name, least in positive.items():
            if getattr(self, name) < least:
                raise HaruhiError(f"{flag_of(name)} must be at least {least}, not {getattr(self, name)}")
        if self.batch_size < 0 or self.grad_accum < 0:
            raise HaruhiError("--batch-size and --grad-accum are 0 (auto) or positive")
        if self.max_steps < 0 or self.max_samples < 0 or self.profile_steps < 0:
            raise HaruhiError("--max-steps, --max-samples and --profile-steps are 0 (off) or positive")
        if self.max_steps == 0 and not self.epochs > 0:
            raise HaruhiError(f"--epochs must be positive (or set --max-steps), not {self.epochs}")
        if not 0 <= self.lora_dropout < 1:
            raise HaruhiError(f"--lora-dropout must be in [0, 1), not {self.lora_dropout}")
        if not 0 <= self.warmup_ratio < 1:
            raise HaruhiError(f"--warmup-ratio must be in [0, 1), not {self.warmup_ratio}")
        if not self.learning_rate > 0:
            raise HaruhiError(f"--lr must be positive, not {self.learning_rate}")
        if self.keep_checkpoints == 1 or self.keep_checkpoints < 0:
            raise HaruhiError("--keep-checkpoints is 0 (keep all) or at least 2 (a kill during a save must leave "
                              "one complete checkpoint)")
        if not self.lora_targets or not all(isinstance(t, str) and t for t in self.lora_targets):
            raise HaruhiError("--lora-targets needs at least one target, e.g. attention,mlp")
        if not self.base:
            raise HaruhiError("--base is empty: pass a checkpoint folder or a hub id such as openai/gpt-oss-20b")
        return self


#: Settings that fix the data order, the model or the optimizer state: a resumed run must keep them.
RESUME_LOCKED = ("base", "dataset", "max_length", "packing", "max_samples", "lora_r", "lora_alpha", "lora_dropout",
                 "lora_targets", "batch_size", "grad_accum", "seed", "template", "reasoning_effort", "load_in_4bit",
                 "optimizer")


def flag_of(name: str) -> str:
    f = _FIELDS[name]
    return f.metadata.get("flag") or "--" + name.replace("_", "-")


_FIELDS = {f.name: f for f in fields(TrainConfig)}
SECTIONS = ("model", "data", "lora", "train", "output")


def to_cli_args(config: TrainConfig, *, changed_only: bool = False) -> list[str]:
    """The ``haruhi train`` flags that reproduce ``config`` (with ``changed_only``: those that differ
    from the defaults, plus the output folder), for launchers and tests that start a run."""
    defaults = TrainConfig().to_dict()
    args: list[str] = []
    for name, value in config.to_dict().items():
        if changed_only and name != "output" and value == defaults[name]:
            continue
        flag = flag_of(name)
        if _FIELDS[name].metadata.get("switch"):  # --name / --no-name; auto is the flag left out
            if value != "auto":
                args.append(flag if value == "on" else "--no-" + flag[2:])
        elif isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            args += [flag, ",".join(value)]
        else:
            args += [flag, str(value)]
    return args


def settings() -> list:
    """The dataclass fields in order (name, type, default, section, help, choices)."""
    return list(fields(TrainConfig))


_SWITCH_WORDS = {True: "on", False: "off", "true": "on", "yes": "on", "1": "on", "false": "off", "no": "off",
                 "0": "off"}


def _coerce(name: str, value: Any, where: str) -> Any:
    if _FIELDS[name].metadata.get("switch"):  # auto/on/off; true/false from older files and forms
        if isinstance(value, bool):
            return _SWITCH_WORDS[value]
        if not isinstance(value, str):
            raise HaruhiError(f"{where}: {name} is auto, on or off, not {value!r}")
        return _SWITCH_WORDS.get(value.strip().lower(), value.strip().lower())
    default = getattr(TrainConfig(), name)
    kind = type(default)
    if kind is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise HaruhiError(f"{where}: {name} is a list of names, e.g. [\"attention\", \"mlp\"]")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise HaruhiError(f"{where}: {name} is true or false, not {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HaruhiError(f"{where}: {name} is a whole number, not {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HaruhiError(f"{where}: {name} is a number, not {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise HaruhiError(f"{where}: {name} is a string, not {value!r}")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file: ``[section] key = value`` (top-level keys are accepted too)."""
    p = Path(path)
    if not p.is_file():
        raise HaruhiError(f"config file not found: {p}")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise HaruhiError(f"{p} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise HaruhiError(f"{p} is not UTF-8 text") from exc
    values: dict[str, Any] = {}

    def take(key: str, value: Any, where: str) -> None:
        if key not in _FIELDS:
            raise HaruhiError(f"{where}: unknown setting {key!r} (see `haruhi train --print-config` for all settings)")
        values[key] = _coerce(key, value, f"{p}")

    for key, value in raw.items():
        if isinstance(value, dict):
            if key not in SECTIONS:
                raise HaruhiError(f"{p}: unknown section [{key}] (sections: {', '.join(SECTIONS)})")
            for sub, sub_value in value.items():
                take(sub, sub_value, f"{p} [{key}]")
        else:
            take(key, value, str(p))
    return values


def resolve(file_values: dict[str, Any] | None = None, flag_values: dict[str, Any] | None = None,
            base: TrainConfig | None = None) -> TrainConfig:
    """Defaults (or ``base``), then the file, then the flags that were given (None = not given)."""
    merged = (base or TrainConfig()).to_dict()
    merged.update(file_values or {})
    for key, value in (flag_values or {}).items():
        if value is not None:
            merged[key] = _coerce(key, value, flag_of(key))
    return TrainConfig(**merged).validate()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def to_toml(config: TrainConfig, notes: dict[str, str] | None = None) -> str:
    """The config as TOML that :func:`load_toml` reads back; ``notes`` add a comment to a setting."""
    lines = ["# haruhi train configuration (haruhi train --config FILE; flags override it)"]
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        for f in fields(config):
            if f.metadata["section"] != section:
                continue
            line = f"{f.name} = {_toml_value(getattr(config, f.name))}"
            if notes and f.name in notes:
                line += f"  # {notes[f.name]}"
            lines.append(line)
    return "\n".join(lines) + "\n"


def save(config: TrainConfig, path: str | Path) -> None:
    write_text(path, to_toml(config))
