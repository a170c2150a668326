"""The two training engines. An engine only loads the base model and wraps it with LoRA; everything else
(data, loss masks, batching, the training loop, checkpoints, events) is shared in :mod:`trainer.train_loop`.

* ``unsloth`` (CUDA): Unsloth's ``FastLanguageModel`` with its fused kernels, its flex-attention with
  sinks for gpt-oss and its fused cross-entropy. Imported lazily, and only when CUDA is there.
* ``hf`` (any device): transformers + PEFT. On gpt-oss, LoRA reaches the MoE experts' 3-D weights
  through PEFT's ``target_parameters``; attention through ``target_modules``.

Both apply the same recipe: same rank, alpha, dropout, targets, dtype and seed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haruhi_tui.core.errors import HaruhiError

from .train_config import TrainConfig

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
DENSE_MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
EXPERT_PARAMETERS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
SNAPSHOT_IGNORE = ["original/*", "metal/*", "*.gguf", "*.pth", "*.bin", "*.msgpack", "*.h5", "onnx/*"]


# -- where and what ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """This process's place in a (possibly distributed) run."""

    device: str  # "cuda" or "cpu"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.local_rank}" if self.device == "cuda" else "cpu"

    @classmethod
    def from_env(cls, device: str) -> "Placement":
        return cls(device, int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("WORLD_SIZE", 1)))


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(config: TrainConfig) -> str:
    if config.device == "cpu":
        return "cpu"
    has_cuda = cuda_count() > 0
    if config.device == "cuda" and not has_cuda:
        raise HaruhiError("--device cuda, but torch sees no CUDA GPU (is the CUDA build of torch installed?)")
    return "cuda" if has_cuda else "cpu"


def unsloth_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("unsloth") is not None


def resolve_engine(config: TrainConfig, device: str) -> str:
    if config.engine == "hf":
        return "hf"
    if config.engine == "unsloth":
        if device != "cuda":
            raise HaruhiError("--engine unsloth needs a CUDA GPU; use --engine hf (transformers + PEFT) on CPU")
        if not unsloth_available():
            raise HaruhiError("--engine unsloth, but Unsloth is not installed: pip install -e '.[gpu]'")
        return "unsloth"
    return "unsloth" if device == "cuda" and unsloth_available() else "hf"


def resolve_dtype(config: TrainConfig, device: str):
    import torch

    if config.dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, config.dtype)


def resolve_base(spec: str, *, download: bool = True) -> Path:
    """A local checkpoint folder for ``spec``: the folder itself, or the hub snapshot (downloaded if needed)."""
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            kind = "a GGUF file" if path.suffix == ".gguf" else "a file"
            raise HaruhiError(f"--base {spec} is {kind}; training needs a Hugging Face checkpoint folder "
                              "(config.json + *.safetensors) or a hub id such as openai/gpt-oss-20b")
        if not (path / "config.json").is_file():
            raise HaruhiError(f"--base {spec} is not a Hugging Face checkpoint (no config.json in it); pass a folder "
                              "with config.json and *.safetensors, or a hub id such as openai/gpt-oss-20b")
        return path
    looks_like_repo = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not looks_like_repo:
        raise HaruhiError(f"--base {spec}: no such folder (and it is not a hub id like openai/gpt-oss-20b)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, ignore_patterns=SNAPSHOT_IGNORE, local_files_only=True))
    except Exception:
        if not download:
            raise HaruhiError(f"--base {spec} is not downloaded yet") from None
    try:
        return Path(snapshot_download(spec, ignore_patterns=SNAPSHOT_IGNORE))
    except Exception as exc:  # offline, unknown repo, gated repo, disk full
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HaruhiError(f"cannot download {spec} from the Hugging Face hub ({reason[:160]}); check the network "
                          "and the name, or pass a local checkpoint folder with --base") from None


def load_tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    except Exception as exc:
        raise HaruhiError(f"cannot load the tokenizer of {base_dir}: {str(exc).splitlines()[0][:200]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_type(base_dir: Path) -> str:
    from haruhi_tui.core.fsutil import read_json

    config = read_json(base_dir / "config.json", "model config")
    return str(config.get("model_type", ""))


# -- LoRA targets -----------------------------------------------------------------------------------

@dataclass
class LoraTargets:
    """Where the adapters go: Linear modules by name, and 3-D parameters (MoE experts) by path."""

    modules: list[str] = field(default_factory=list)
    parameters: list[str] = field(default_factory=list)
    wants_mlp: bool = False


def lora_targets(model: Any, targets: list[str], *, strict_mlp: bool = True) -> LoraTargets:
    """Expand ``attention``/``mlp`` for this model and check that every target exists in it
    (``strict_mlp=False``: an engine that maps ``mlp`` onto its own expert layout checks it itself)."""
    import torch.nn as nn

    linear_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    param_paths = [name for name, p in model.named_parameters() if p.dim() == 3]
    result = LoraTargets()
    for target in targets:
        if target == "attention":
            found = [m for m in ATTENTION_MODULES if m in linear_names]
            if not found:
                raise HaruhiError("LoRA target 'attention': this model has no q_proj/k_proj/v_proj/o_proj layers; "
                                  "name its attention modules in --lora-targets")
            result.modules.extend(found)
        elif target == "mlp":
            result.wants_mlp = True
            experts = [p for p in EXPERT_PARAMETERS if any(path.endswith(p) for path in param_paths)]
            dense = [m for m in DENSE_MLP_MODULES if m in linear_names]
            if not experts and not dense and strict_mlp:
                raise HaruhiError("LoRA target 'mlp': this model has neither MoE experts nor gate/up/down layers; "
                                  "name its MLP modules in --lora-targets")
            result.parameters.extend(experts)
            result.modules.extend(dense)
        elif "experts." in target or target in ("gate_up_proj",):
            if not any(path.endswith(target) for path in param_paths):
                raise HaruhiError(f"LoRA target {target!r} matches no expert weight in this model")
            result.parameters.append(target)
        else:
            if target not in linear_names:
                raise HaruhiError(f"LoRA target {target!r} matches no Linear layer in this model "
                                  f"(it has: {', '.join(sorted(linear_names))})")
            result.modules.append(target)
    result.modules = list(dict.fromkeys(result.modules))
    result.parameters = list(dict.fromkeys(result.parameters))
    return result


def check_dropout(config: TrainConfig, targets: LoraTargets, moe: bool = False) -> None:
    if config.lora_dropout and (targets.parameters or (moe and targets.wants_mlp)):
        raise HaruhiError("--lora-dropout must be 0 when the MoE experts are LoRA targets (PEFT cannot apply dropout "
                          "to 3-D expert weights); set it to 0 or leave 'mlp' out of --lora-targets")


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


# -- packed rows ------------------------------------------------------------------------------------

def _decoder_of(model: Any) -> Any:
    """The transformer stack (the module that builds the attention masks) under any wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    return decoder if decoder is not None else getattr(base, "model", base)


def install_packed_masks(model: Any) -> Any:
    """Build the attention masks of packed rows from their position ids before the decoder runs.

    transformers derives a mask that stays inside each packed sample from ``position_ids`` only where a
    model passes them to its mask functions; gpt-oss (5.x) does not, but accepts a ready mask per layer
    type, which this hook provides (full and sliding-window, both limited to each sample)."""
    import torch
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    decoder = _decoder_of(model)
    config = decoder.config

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple | None:
        position_ids = kwargs.get("position_ids")
        if (position_ids is None or kwargs.get("attention_mask") is not None
                or kwargs.get("past_key_values") is not None):
            return None
        batch, length = position_ids.shape
        dtype = next(module.parameters()).dtype
        probe = torch.empty((batch, length, 1), dtype=dtype, device=position_ids.device)
        mask_kwargs = {"config": config, "inputs_embeds": probe, "attention_mask": None, "past_key_values": None,
                       "position_ids": position_ids}
        masks = {"full_attention": create_causal_mask(**mask_kwargs)}
        if "sliding_attention" in (getattr(config, "layer_types", None) or []):
            masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        kwargs["attention_mask"] = masks
        return args, kwargs

    return decoder.register_forward_pre_hook(hook, with_kwargs=True)


def packing_leak(model: Any, vocab_size: int) -> tuple[float, float]:
    """How much a packed row's second sample changes when another sample precedes it: (packed, plain
    causal). A model that keeps packed samples apart has the first near zero; the second is the scale."""
    import torch

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, min(vocab_size, 5000), (24,), generator=generator)
    second = torch.randint(0, min(vocab_size, 5000), (16,), generator=generator)
    ids = torch.cat([first, second]).unsqueeze(0).to(device)
    packed_positions = torch.cat([torch.arange(24), torch.arange(16)]).unsqueeze(0).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = model(input_ids=second.unsqueeze(0).to(device)).logits[0].float()
            packed = model(input_ids=ids, position_ids=packed_positions).logits[0, 24:].float()
            causal = model(input_ids=ids).logits[0, 24:].float()
    finally:
        model.train(was_training)
    return float((packed - alone).abs().max()), float((causal - alone).abs().max())


def keeps_packed_samples_apart(model: Any, vocab_size: int) -> bool:
    """Check packing on the loaded model, installing our mask hook where transformers does not do it.
    False (the loop then length-groups instead of packing) if neither keeps the samples apart."""
    try:
        leak, scale = packing_leak(model, vocab_size)
    except Exception:
        return False
    if leak <= max(1e-3, 0.2 * scale):
        return True
    handle = install_packed_masks(model)
    try:
        leak, scale = packing_leak(model, vocab_size)
    except Exception:
        leak, scale = 1.0, 0.0
    if leak <= max(1e-3, 0.2 * scale):
        return True
    handle.remove()
    return False


# -- engines ----------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A base model wrapped with LoRA, and what the shared loop needs to know about the engine."""

    model: Any
    engine: str
    #: The attention honours packed position ids (no attention across sample boundaries).
    packs_safely: bool
    #: The loop should compute logits only where there is a label (the engine has no fused loss of its own).
    sparse_logits: bool
    info: dict[str, Any] = field(default_factory=dict)


def _attention_for(config: TrainConfig, mtype: str, device: str) -> str:
    if config.attention != "auto":
        return config.attention
    if mtype == "gpt_oss":  # no SDPA path for gpt-oss in transformers; flex is fast on CUDA, eager on CPU
        return "flex_attention" if device == "cuda" else "eager"
    return "sdpa"


class HFEngine:
    """transformers + PEFT: runs anywhere; the reference implementation the Unsloth engine is held to.
    ``prebuilt``: a base model already in memory (benchmarks build random weights on the GPU) instead of
    loading ``base_dir``'s weights."""

    name = "hf"

    def __init__(self, prebuilt: Any = None) -> None:
        self.prebuilt = prebuilt

    def load(self, config: TrainConfig, base_dir: Path, placement: Placement) -> LoadedModel:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoConfig, AutoModelForCausalLM

        started = time.time()
        dtype = resolve_dtype(config, placement.device)
        hf_config = AutoConfig.from_pretrained(str(base_dir))
        mtype = getattr(hf_config, "model_type", "")
        attention = _attention_for(config, mtype, placement.device)
        kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attention}
        quant = getattr(hf_config, "quantization_config", None) or {}
        quant_method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        if quant_method == "mxfp4":  # the original gpt-oss checkpoint: train on dequantized experts
            from transformers import Mxfp4Config

            kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
        if config.load_in_4bit:
            if placement.device != "cuda":
                raise HaruhiError("--load-in-4bit needs a CUDA GPU (bitsandbytes); on CPU train the bf16/fp32 base")
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                               bnb_4bit_compute_dtype=torch.bfloat16)
        if placement.device == "cuda":
            kwargs["device_map"] = {"": placement.local_rank}
        if self.prebuilt is not None:
            model, self.prebuilt = self.prebuilt, None
            attention = model.config._attn_implementation
        else:
            model = AutoModelForCausalLM.from_pretrained(str(base_dir), **kwargs)
        model.config.use_cache = False
        targets = lora_targets(model, config.lora_targets)
        check_dropout(config, targets)
        if config.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.checkpointing)
        elif config.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        torch.manual_seed(config.seed)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets.modules or None, target_parameters=targets.parameters or None,
                          bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        packs_safely = keeps_packed_samples_apart(model, hf_config.get_text_config().vocab_size)
        trainable, total = count_parameters(model)
        info = {"engine": self.name, "device": placement.device, "dtype": str(dtype).replace("torch.", ""),
                "attention": attention, "model_type": mtype, "lora_modules": targets.modules,
                "lora_parameters": targets.parameters, "trainable_parameters": trainable,
                "total_parameters": total, "load_seconds": round(time.time() - started, 1)}
        info["packing_checked"] = packs_safely
        return LoadedModel(model, self.name, packs_safely=packs_safely, sparse_logits=True, info=info)


class UnslothEngine:
    """Unsloth's FastLanguageModel (CUDA). Its gpt-oss training attention (flex attention with sinks)
    builds a plain causal mask and ignores position ids and masks, so packed rows would attend across
    samples: the loop batches length-grouped rows for it instead (right padding, which a causal mask
    keeps away from the real tokens). Its other models' fast paths are not known to honour packed
    position ids either, so the same holds for them."""

    name = "unsloth"

    def load(self, config: TrainConfig, base_dir: Path, placement: Placement) -> LoadedModel:
        import torch
        import unsloth  # noqa: F401  (patches transformers; imported before the model is built)
        from unsloth import FastLanguageModel

        started = time.time()
        torch.cuda.set_device(placement.local_rank)
        dtype = resolve_dtype(config, placement.device)
        mtype = model_type(base_dir)
        model, _ = FastLanguageModel.from_pretrained(
            model_name=str(base_dir), max_seq_length=config.max_length, dtype=dtype,
            load_in_4bit=config.load_in_4bit, full_finetuning=False, device_map={"": placement.local_rank},
            random_state=config.seed, local_files_only=True,
        )
        targets = lora_targets(model, config.lora_targets, strict_mlp=False)
        check_dropout(config, targets, moe=mtype == "gpt_oss")
        modules = list(targets.modules)
        if targets.wants_mlp:  # Unsloth maps gate/up/down onto the MoE experts itself, whatever their layout
            modules += [m for m in DENSE_MLP_MODULES if m not in modules]
        explicit = [p for p in targets.parameters if p not in EXPERT_PARAMETERS]
        torch.manual_seed(config.seed)
        model = FastLanguageModel.get_peft_model(
            model, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=modules, target_parameters=explicit or None, bias="none",
            use_gradient_checkpointing="unsloth" if config.checkpointing else False,
            random_state=config.seed, max_seq_length=config.max_length,
        )
        trainable, total = count_parameters(model)
        flex_sinks = mtype == "gpt_oss" and os.environ.get("UNSLOTH_ENABLE_FLEX_ATTENTION", "1") != "0"
        info = {"engine": self.name, "device": placement.device, "dtype": str(dtype).replace("torch.", ""),
                "attention": "unsloth flex attention with sinks" if flex_sinks else
                getattr(model.config, "_attn_implementation", "unknown"),
                "model_type": mtype, "lora_modules": modules, "lora_parameters": explicit,
                "trainable_parameters": trainable, "total_parameters": total,
                "load_seconds": round(time.time() - started, 1), "unsloth_version": getattr(unsloth, "__version__", "")}
        return LoadedModel(model, self.name, packs_safely=False, sparse_logits=False, info=info)


def engine_for(name: str):
    return UnslothEngine() if name == "unsloth" else HFEngine()
