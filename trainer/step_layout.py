"""Rows per micro-batch, micro-batches per step and gradient checkpointing, picked by the GPU's memory.

With ``--batch-size``, ``--grad-accum`` and ``--gradient-checkpointing`` left to auto, every device trains
``ROWS_PER_STEP`` (8) rows per optimizer step, and the run takes the first of these layouts whose estimated
peak memory fits the card:

    8 x 1 without checkpointing, 8 x 1 with it, 4 x 2, 2 x 4, 1 x 8 (with it)

Bigger micro-batches are faster: on gpt-oss-20b, 8 x 1 trained a third faster than the reference recipe's
4 x 2 on one GPU and scaled better over four (``benchmarks/results``); checkpointing recomputes every layer
(about a third of the step), so it is used only where the card needs it. Settings given explicitly are kept,
and the rest is chosen around them (``--batch-size 4`` alone gives 4 x 2). The choice and its reason go to
the log and to events.jsonl; the measured peak of every process is in each step's record.

The estimate is deliberately simple and on the safe side: the frozen weights (parameter count of the model
built on the meta device, times bytes per weight), the LoRA weights with their gradients and AdamW state,
and activations per token from the layer shapes (without checkpointing: what each decoder layer keeps for
the backward pass; with it: the layer inputs plus one layer's working set), times the widest micro-batch the
batch plan contains, plus the logits of the labelled tokens where the loss is not fused. Against the
gpt-oss-20b measurements it errs high (by 2 % at 8 x 1024 tokens with checkpointing, 9 % without, 19 % for real
batches of 4 x <= 2048 without), which also covers what data parallelism adds (seen: +9 GiB per GPU on 4 GPUs).
It does not depend on the number of processes, so a run on one GPU and on N GPUs of the same card train alike,
and their speeds compare like for like.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import train_config as tc

GIB = 2**30
#: Activations are estimated from the layer shapes, then scaled by this for what the shapes miss.
ACTIVATION_SAFETY = 1.3
#: Share of the card's memory the plan may use, and what it leaves aside besides (CUDA context, NCCL, allocator).
USABLE_SHARE = 0.92
RESERVED_BYTES = 1.5 * GIB
#: Bytes per trainable parameter: fp32 LoRA weight, its gradient, AdamW's two moments.
TRAINABLE_BYTES = 16


@dataclass(frozen=True)
class Layout:
    """What a run trains per step, and why."""

    batch_size: int
    grad_accum: int
    gradient_checkpointing: bool
    reason: str
    estimate_gib: float | None = None
    usable_gib: float | None = None
    #: The estimate's frozen weights and trainable state alone (compare with the memory measured after loading).
    static_gib: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        shape = (f"{self.batch_size} row{'s' if self.batch_size != 1 else ''} x {self.grad_accum} "
                 f"micro-batch{'es' if self.grad_accum != 1 else ''} per step, gradient checkpointing "
                 f"{'on' if self.gradient_checkpointing else 'off'}")
        return f"{shape}: {self.reason}"


@dataclass(frozen=True)
class Footprint:
    """What the estimate needs to know of a model: bytes of frozen weights, trainable (LoRA) parameters,
    activation bytes per token with and without checkpointing, logits bytes per labelled token."""

    weight_bytes: float
    trainable_params: int
    per_token: dict[bool, float]
    per_labelled_token: float = 0.0

    @property
    def static_bytes(self) -> float:
        return self.weight_bytes + self.trainable_params * TRAINABLE_BYTES

    def peak(self, tokens: int, labelled: int, checkpointing: bool) -> float:
        return self.static_bytes + tokens * self.per_token[checkpointing] + labelled * self.per_labelled_token


# -- the model's footprint --------------------------------------------------------------------------

def _dims(text_config: Any) -> dict[str, int]:
    h = int(text_config.hidden_size)
    heads = int(getattr(text_config, "num_attention_heads", 0) or 1)
    head_dim = int(getattr(text_config, "head_dim", 0) or h // heads)
    kv_heads = int(getattr(text_config, "num_key_value_heads", 0) or heads)
    experts = int(getattr(text_config, "num_local_experts", 0) or getattr(text_config, "num_experts", 0) or 0)
    per_token_experts = int(getattr(text_config, "num_experts_per_tok", 0) or 1) if experts else 1
    inner = int(getattr(text_config, "moe_intermediate_size", 0) or getattr(text_config, "intermediate_size", 0)
                or 4 * h)
    return {"h": h, "q": heads * head_dim, "kv": kv_heads * head_dim, "experts": experts, "k": per_token_experts,
            "inner": inner, "layers": int(text_config.num_hidden_layers),
            "vocab": int(getattr(text_config, "vocab_size", 0) or 0)}


def activation_bytes(text_config: Any, element_bytes: int) -> dict[bool, float]:
    """Activation bytes per token of the whole stack, without (False) and with (True) checkpointing.

    Per layer and token a decoder layer keeps for its backward pass: the normed input and the residual, the
    query, key and value, the attention output and the output projection's result, the MLP input, and for each
    of the token's experts (one for a dense MLP) its input, the gate/up output (2 x inner), the activation
    (inner) and its down projection; plus the router logits."""
    d = _dims(text_config)
    per_layer = (2 * d["h"] + d["q"] + 2 * d["kv"] + d["q"] + d["h"] + d["h"]
                 + d["k"] * (d["h"] + 3 * d["inner"] + d["h"]) + d["experts"]) * element_bytes * ACTIVATION_SAFETY
    without = d["layers"] * per_layer
    with_checkpointing = 2 * d["layers"] * d["h"] * element_bytes + per_layer  # each layer's input, twice over
    return {False: without, True: with_checkpointing}


def lora_parameters(model: Any, config: tc.TrainConfig) -> int:
    """LoRA parameters ``r x (in + out)`` for every targeted Linear and ``r x experts x (in + out)`` for every
    targeted 3-D expert weight, counted on ``model`` (meta-device weights do)."""
    import torch.nn as nn

    from .engines import lora_targets

    targets = lora_targets(model, config.lora_targets, strict_mlp=False)
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets.modules:
            count += module.in_features + module.out_features
    for name, param in model.named_parameters():
        if param.dim() == 3 and any(name.endswith(p) for p in targets.parameters):
            experts, a, b = param.shape
            count += experts * (a + b)
    return count * config.lora_r


def model_footprint(base_dir: Path, config: tc.TrainConfig, *, engine: str, element_bytes: int) -> Footprint:
    """The footprint of ``base_dir``'s architecture, counted on the meta device (no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(str(base_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    heads = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
             for p in m.parameters()}
    weight_bytes = 0.0
    for param in model.parameters():
        per_weight = element_bytes
        if config.load_in_4bit and param.dim() >= 2 and id(param) not in heads:
            per_weight = 0.56  # 4-bit blocks and their scales
        weight_bytes += param.numel() * per_weight
    text = hf_config.get_text_config()
    per_labelled = 0.0 if engine == "unsloth" else _dims(text)["vocab"] * (element_bytes + 8)  # logits, fp32 + grad
    return Footprint(weight_bytes, lora_parameters(model, config), activation_bytes(text, element_bytes), per_labelled)


# -- the choice -------------------------------------------------------------------------------------

def candidates(config: tc.TrainConfig) -> list[tuple[int, int, bool]]:
    """(rows, micro-batches, checkpointing) in the order they are tried, within what ``config`` fixes."""
    if config.batch_size:
        sizes = [config.batch_size]
    elif config.grad_accum:
        sizes = [max(1, tc.ROWS_PER_STEP // config.grad_accum)]
    else:
        sizes = [size for size in (8, 4, 2, 1) if size <= tc.ROWS_PER_STEP]
    out = []
    for n, size in enumerate(sizes):
        accum = config.grad_accum or max(1, tc.ROWS_PER_STEP // size)
        if config.gradient_checkpointing == "auto":
            out += [(size, accum, False), (size, accum, True)] if n == 0 else [(size, accum, True)]
        else:
            out.append((size, accum, config.gradient_checkpointing == "on"))
    return out


def choose(config: tc.TrainConfig, *, card_bytes: int | None, card_name: str, footprint: Footprint | None,
           worst: Callable[[int], tuple[int, int]]) -> Layout:
    """The first candidate whose estimated peak fits ``card_bytes``. ``worst(rows)``: (tokens, labelled tokens)
    of the widest micro-batch one process gets with that many rows. Without a card (CPU) or an estimate the
    first candidate is taken, checkpointing on where it was left to auto."""
    options = candidates(config)
    if card_bytes is None or footprint is None:
        size, accum, checkpointing = options[0]
        checkpointing = checkpointing or config.gradient_checkpointing == "auto"
        why = ("no GPU memory to plan for" if card_bytes is None else
               f"the model's memory could not be estimated on {card_name}")
        return Layout(size, accum, checkpointing, why)
    usable = card_bytes * USABLE_SHARE - RESERVED_BYTES
    tried = []
    for size, accum, checkpointing in options:
        tokens, labelled = worst(size)
        need = footprint.peak(tokens, labelled, checkpointing)
        if need <= usable:
            return Layout(size, accum, checkpointing, _reason(config, card_name, card_bytes, usable, need, tried),
                          round(need / GIB, 1), round(usable / GIB, 1), round(footprint.static_bytes / GIB, 1))
        tried.append(f"{size} x {accum}{'' if checkpointing else ' without checkpointing'} needs ~{need / GIB:.0f} GiB")
    size, accum, checkpointing = options[-1]
    tokens, labelled = worst(size)
    need = footprint.peak(tokens, labelled, checkpointing)
    return Layout(size, accum, checkpointing,
                  f"nothing fits: ~{need / GIB:.0f} GiB needed, {usable / GIB:.0f} GiB usable on {card_name}; "
                  "lower --max-length or use --load-in-4bit if it runs out of memory",
                  round(need / GIB, 1), round(usable / GIB, 1), round(footprint.static_bytes / GIB, 1))


def _reason(config: tc.TrainConfig, card: str, card_bytes: int, usable: float, need: float, tried: list[str]) -> str:
    given = [flag for flag, value in (("--batch-size", config.batch_size), ("--grad-accum", config.grad_accum))
             if value] + (["--gradient-checkpointing"] if config.gradient_checkpointing != "auto" else [])
    text = (f"estimated peak ~{need / GIB:.0f} GiB of {usable / GIB:.0f} GiB usable on {card} "
            f"({card_bytes / GIB:.0f} GiB)")
    if tried:
        text += "; " + ", ".join(tried)
    if given:
        text += f" ({', '.join(given)} as given)"
    return text


def resolve_layout(config: tc.TrainConfig, placement: Any, base_dir: Path, engine: str, sequences: Sequence[Any],
                   previous: dict[str, Any]) -> Layout:
    """The layout of a run about to start. A resumed run keeps its micro-batches (they fix the data order;
    ``previous`` is its start event's resolved settings); the rest is :func:`choose`'s, for this process's
    card. Every process decides alike: same model, same plan, same kind of card."""
    from .batch_plan import plan_batches
    from .engines import resolve_dtype

    if previous.get("batch_size"):
        config = dataclasses.replace(config, batch_size=int(previous["batch_size"]),
                                     grad_accum=int(previous["grad_accum"]))
    card_bytes, card_name, footprint = None, "CPU", None
    if placement.device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(placement.local_rank)
        card_bytes, card_name = int(props.total_memory), str(props.name)
        try:
            element = torch.finfo(resolve_dtype(config, "cuda")).bits // 8
            footprint = model_footprint(base_dir, config, engine=engine, element_bytes=element)
        except Exception as exc:  # an architecture transformers cannot build on the meta device: no estimate
            card_name += f" (no estimate: {type(exc).__name__}: {str(exc)[:120]})"
    packing = previous.get("packing") or (config.packing if config.packing != "auto" else
                                          "grouped" if engine == "unsloth" else "packed")
    trainable = [s.trainable for s in sequences] if footprint and footprint.per_labelled_token else None

    def worst(rows: int) -> tuple[int, int]:
        plan = plan_batches(sequences, packing, rows, config.max_length, config.seed, placement.world_size)
        return plan.max_batch_tokens, plan.max_batch_labelled(trainable) if trainable else 0

    return choose(config, card_bytes=card_bytes, card_name=card_name, footprint=footprint, worst=worst)
