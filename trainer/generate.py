"""Batched generation for evaluation: transformers (HF checkpoints, + LoRA adapter) and llama.cpp (GGUF).

Both engines take token ids built by :mod:`haruhi_tui.core.prompt_format` and stream :class:`Completion`\\ s back
as sequences finish, so the evaluator can append each prediction to disk at once.

* **transformers**: prompts sorted by length and left-padded into large batches; the prompt is prefilled in
  chunks of columns (bounded memory), then one token per step for every live row; finished rows are
  dropped from the batch (the KV cache is compacted when a quarter of the rows are done). gpt-oss runs on
  :func:`sink_attention`, an exact attention-with-sinks on ``scaled_dot_product_attention`` (the fused
  memory-efficient kernel on CUDA) that transformers lacks for gpt-oss (eager only, or flex).
* **llama.cpp**: continuous batching on one context with ``parallel`` sequences: a slot that finishes
  takes the next prompt at once, prompt chunks and generated tokens of all slots share every
  ``llama_decode``; a new prompt reuses the longest prefix already in any slot's KV cache (same persona),
  so shared role prompts are computed once.

Each sequence stops by its own :class:`StopRule`: the model's end tokens, harmony's ``<|return|>`` or the
end of the *final* message, the play script's closing ``」``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence

from haruhi_tui.core import harmony
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.prompt_format import Conversation, Style, detect_style, render_text, stop_strings, to_messages

Sampling = Literal["greedy", "lf"]
SAMPLINGS: tuple[str, ...] = ("greedy", "lf")

#: LLaMA-Factory's generation defaults (its GeneratingArguments): what its predict run sampled with.
LF_SAMPLING = {"temperature": 0.95, "top_p": 0.7, "top_k": 50, "max_new_tokens": 1024}


@dataclass(frozen=True)
class DecodingOptions:
    """How to pick tokens. ``greedy`` is reproducible; ``lf`` samples like LLaMA-Factory's defaults."""

    sampling: Sampling = "greedy"
    max_new_tokens: int = 1024
    temperature: float = LF_SAMPLING["temperature"]
    top_p: float = LF_SAMPLING["top_p"]
    top_k: int = LF_SAMPLING["top_k"]
    seed: int = 42

    def describe(self) -> dict:
        if self.sampling == "greedy":
            return {"sampling": "greedy", "max_new_tokens": self.max_new_tokens}
        return {"sampling": "lf", "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed}


@dataclass(frozen=True)
class Request:
    index: int
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Completion:
    index: int
    raw: str                      # the output text, special tokens kept
    tokens: int                   # generated tokens
    finish: Literal["stop", "length"]


# -- where a reply ends -------------------------------------------------------------------------

_RETURN, _CALL, _EOT = (harmony.SPECIAL_TOKEN_IDS[t] for t in (harmony.RETURN, harmony.CALL, harmony.ENDOFTEXT))
_START, _END, _MESSAGE, _CHANNEL = (harmony.SPECIAL_TOKEN_IDS[t] for t in (harmony.START, harmony.END, harmony.MESSAGE, harmony.CHANNEL))


class StopRule:
    """Decides, token by token, whether one sequence's reply is complete.

    ``end_ids`` are the model's end-of-generation tokens. Harmony also ends at ``<|return|>``/``<|call|>``
    and at the ``<|end|>`` that closes a *final*-channel message (the analysis message's ``<|end|>`` does
    not end the reply). The script style ends at its stop strings (``」``, newline). ``decode`` turns ids
    into text (only needed for channel names and stop strings).
    """

    def __init__(self, style: Style, end_ids: Iterable[int], decode: Callable[[Sequence[int]], str],
                 stops: Sequence[str] | None = None) -> None:
        self.style = style
        self.end_ids = set(end_ids)
        self.decode = decode
        self.stops = list(stops) if stops is not None else (stop_strings(style) if style == "script" else [])
        self._ids: list[int] = []
        self._header: list[int] = []
        self._in_header = True
        self._in_final = False

    def push(self, token: int) -> bool:
        self._ids.append(token)
        if token in self.end_ids:
            return True
        if self.style == "harmony":
            return self._harmony(token)
        if self.stops:
            tail = self.decode(self._ids[-8:])
            return any(s in tail for s in self.stops)
        return False

    def _harmony(self, token: int) -> bool:
        if token in (_RETURN, _CALL, _EOT):
            return True
        if token in (_START, _END):
            if token == _END and self._in_final:
                return True
            self._in_header, self._header, self._in_final = True, [], False
        elif token == _MESSAGE and self._in_header:
            header = self._header
            channel = ""
            if _CHANNEL in header:
                channel = self.decode(header[header.index(_CHANNEL) + 1:]).strip()
            self._in_final = channel == "" or channel.split()[0].startswith("final")
            self._in_header = False
        elif self._in_header:
            self._header.append(token)
        return False


class FixedLengthStop:
    """Stops after a fixed number of tokens (benchmarks: random weights never say <|return|>)."""

    def __init__(self, length: int) -> None:
        self.length, self.n = max(1, length), 0

    def push(self, token: int) -> bool:
        self.n += 1
        return self.n >= self.length


StopFactory = Callable[[Request], "StopRule | FixedLengthStop"]


# -- transformers ---------------------------------------------------------------------------------

#: Our attention implementation name (registered with transformers on first use).
SINK_ATTENTION = "haruhi_sinks"
#: Working memory one prefill attention call may use (rows are processed in slices to stay near it).
PREFILL_ATTENTION_BYTES = 1 << 30


def sink_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention with gpt-oss's learned sinks, exact, on ``scaled_dot_product_attention``.

    A sink is one extra logit per head in the softmax denominator. For a prompt (several queries),
    :func:`_sink_prefill` adds it as an extra key so SDPA's fused kernel computes softmax over
    [scores, sink] without materialising the scores, rows in slices so memory stays bounded for any
    batch. One new token (decoding) is a small grouped matmul instead, reading each cached key once
    rather than copying it per head. Padding rows stay finite: the sink is always visible.
    """
    import torch
    import torch.nn.functional as F

    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    sinks = module.sinks.to(query.dtype)
    mask = attention_mask
    if mask is not None:
        mask = mask[:, :, :, :k_len]
        if mask.dtype != torch.bool:
            mask = mask == 0
    if q_len == 1:
        q = query.reshape(batch, kv_heads, groups, dim)
        scores = torch.matmul(q, key.transpose(2, 3)) * scaling
        if mask is not None:
            scores = scores.masked_fill(~mask.reshape(mask.shape[0], 1, 1, k_len), torch.finfo(scores.dtype).min)
        combined = torch.cat([scores, sinks.reshape(1, kv_heads, groups, 1).expand(batch, -1, -1, -1)], dim=-1)
        combined = combined - combined.amax(dim=-1, keepdim=True)
        probs = F.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1]
        out = torch.matmul(probs.to(value.dtype), value)
        return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None
    # Rows at a time so the padded keys/values and the folded mask stay near PREFILL_ATTENTION_BYTES.
    per_row = (kv_heads * (k_len + 1) * (dim + 8) * query.element_size() * 2 + heads * q_len * (k_len + 1)
               + heads * q_len * (dim + 8) * query.element_size() * 2)
    step = max(1, PREFILL_ATTENTION_BYTES // per_row)
    outs = [_sink_prefill(query[i:i + step], key[i:i + step], value[i:i + step],
                          None if mask is None else mask[i:i + step] if mask.shape[0] > 1 else mask, sinks, scaling)
            for i in range(0, batch, step)]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
    return out.transpose(1, 2).contiguous(), None


def _sink_prefill(query, key, value, mask, sinks, scaling):
    """Several queries per row, in one fused SDPA call per KV head group.

    The query heads sharing a KV head are folded into the query axis (keys are never repeated per head),
    and the sink becomes an extra key: every key gets a 0 feature, the sink key a 1 there (value zero), and
    each query row carries its head's ``sink / scale`` in that feature, so the softmax runs over
    [scores, sink] exactly as gpt-oss defines it.
    """
    import torch
    import torch.nn.functional as F

    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    pad = (-(dim + 1)) % 8
    width = dim + 1 + pad
    q = query.reshape(batch, kv_heads, groups * q_len, dim)
    sink_feature = (sinks / scaling).reshape(1, kv_heads, groups, 1, 1).expand(batch, -1, -1, q_len, 1)
    q_ext = torch.cat([q, sink_feature.reshape(batch, kv_heads, groups * q_len, 1),
                       q.new_zeros(batch, kv_heads, groups * q_len, pad)], dim=-1)
    k_ext = key.new_zeros(batch, kv_heads, k_len + 1, width)
    k_ext[:, :, 0, dim] = 1
    k_ext[:, :, 1:, :dim] = key
    v_ext = value.new_zeros(batch, kv_heads, k_len + 1, width)
    v_ext[:, :, 1:, :dim] = value
    if mask is None:
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)[None, None]
    mask = mask.expand(-1, -1, q_len, -1)
    full = mask.new_ones(mask.shape[0], groups, q_len, k_len + 1)
    full[:, :, :, 1:] = mask  # broadcast over the folded heads
    full = full.reshape(mask.shape[0], 1, groups * q_len, k_len + 1)
    out = F.scaled_dot_product_attention(q_ext, k_ext, v_ext, attn_mask=full, scale=scaling)[..., :dim]
    return out.reshape(batch, heads, q_len, dim)


def _sink_mask(*args, **kwargs):
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register_sink_attention() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SINK_ATTENTION, sink_attention)
    AttentionMaskInterface.register(SINK_ATTENTION, _sink_mask)
    return SINK_ATTENTION


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def check_adapter(adapter: Path, base: Path, base_config) -> None:
    """Refuse an adapter made for another model before PEFT fails deep inside (one-line reason)."""
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise HaruhiError(f"{adapter} is not a LoRA adapter (no adapter_config.json): pass the folder `haruhi train` wrote")
    adapter_config = _read_json(config_file)
    if not adapter_config:
        raise HaruhiError(f"{config_file} is not valid JSON: the adapter is damaged; train again or restore it")
    origin = adapter_config.get("base_model_name_or_path") or ""
    origin_config = _read_json(Path(origin) / "config.json") if origin and Path(origin).is_dir() else {}
    for key in ("model_type", "hidden_size", "num_hidden_layers", "num_local_experts", "vocab_size"):
        ours, theirs = getattr(base_config, key, None), origin_config.get(key)
        if ours is not None and theirs is not None and ours != theirs:
            raise HaruhiError(
                f"adapter {adapter} was trained on {origin} ({key}={theirs}), which does not match {base} ({key}={ours}): "
                "pass the base model the adapter was trained on")


class HFGenerator:
    """A transformers model (optionally + LoRA) generating for many prompts at once."""

    engine = "transformers"

    def __init__(self, model, tokenizer, style: Style, *, path: str, adapter: str | None = None,
                 batch_size: int | None = None, prefill_tokens: int | None = None) -> None:
        import torch

        self.model, self.tokenizer, self.style = model, tokenizer, style
        self.path, self.adapter = path, adapter
        self.device = next(model.parameters()).device
        cuda = self.device.type == "cuda"
        self.batch_size = batch_size or (self._auto_batch_size() if cuda else 8)
        self.prefill_tokens = prefill_tokens or (32768 if cuda else 2048)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.end_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
        self.evicted = 0  # stragglers moved to a later batch (diagnostics)
        #: Where the time goes (seconds, tokens, steps); exact only with ``profile`` (adds a GPU sync per batch).
        self.profile = False
        self.stats = {"prefill_seconds": 0.0, "prefill_tokens": 0, "padded_tokens": 0, "decode_steps": 0, "batches": 0}
        self._torch = torch

    # loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, adapter: str | os.PathLike | None = None, *, device: str | None = None,
             dtype: str | None = None, attn: str = "auto", batch_size: int | None = None,
             prefill_tokens: int | None = None) -> "HFGenerator":
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        base = Path(path)
        if not (base / "config.json").is_file():
            raise HaruhiError(f"{base} is not a Hugging Face model folder (no config.json); pass a .gguf file or a model folder")
        try:
            config = AutoConfig.from_pretrained(base)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
            raise HaruhiError(f"cannot read {base}/config.json: {str(exc).splitlines()[0]}") from exc
        adapter_dir = Path(adapter) if adapter else None
        if adapter_dir is not None:
            if not adapter_dir.is_dir():
                raise HaruhiError(f"adapter folder not found: {adapter_dir}")
            check_adapter(adapter_dir, base, config)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                       "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}.get(
            dtype or ("bf16" if device.startswith("cuda") else "fp32"))
        if torch_dtype is None:
            raise HaruhiError(f"--dtype is bf16, fp16 or fp32, not {dtype!r}")
        is_gpt_oss = getattr(config, "model_type", "") == "gpt_oss"
        if attn == "auto":
            attn = register_sink_attention() if is_gpt_oss else "sdpa"
        elif attn == SINK_ATTENTION:
            register_sink_attention()
        kwargs: dict = {"dtype": torch_dtype, "attn_implementation": attn}
        quant = getattr(config, "quantization_config", None) or {}
        if (quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)) == "mxfp4":
            from transformers import Mxfp4Config

            kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
        tokenizer_dir = adapter_dir if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file() else base
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        except Exception as exc:  # noqa: BLE001
            raise HaruhiError(f"cannot load the tokenizer of {tokenizer_dir}: {str(exc).splitlines()[0]}") from exc
        try:
            model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        except ValueError as exc:
            if attn == "sdpa" and "scaled_dot_product_attention" in str(exc):
                kwargs["attn_implementation"] = "eager"
                model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
            else:
                raise HaruhiError(f"cannot load {base}: {str(exc).splitlines()[0]}") from exc
        except (OSError, RuntimeError) as exc:
            raise HaruhiError(f"cannot load {base}: {str(exc).splitlines()[0]}") from exc
        if adapter_dir is not None:
            model = _attach_adapter(model, adapter_dir, base)
        model.to(device)
        model.eval()
        style = detect_style(getattr(config, "model_type", None), getattr(tokenizer, "chat_template", None))
        return cls(model, tokenizer, style, path=str(base), adapter=str(adapter_dir) if adapter_dir else None,
                   batch_size=batch_size, prefill_tokens=prefill_tokens)

    def _auto_batch_size(self) -> int:
        """Rows per batch: the KV cache of 3072-token rows (full-attention layers; sliding ones hold a
        window) in half the free GPU memory, between 8 and 256."""
        import torch

        config = self.model.config
        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
        full_layers = sum(1 for t in layer_types if t != "sliding_attention") or 1
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        per_row = 2 * full_layers * kv_heads * head_dim * 2 * 3072
        return max(8, min(256, int(free * 0.5 / per_row)))

    def describe(self) -> dict:
        return {"engine": self.engine, "model": self.path, "adapter": self.adapter, "style": self.style,
                "device": str(self.device), "dtype": str(self.model.dtype).replace("torch.", ""),
                "attention": self.model.config._attn_implementation, "batch_size": self.batch_size}

    # prompts ---------------------------------------------------------------------------------

    def encode(self, conv: Conversation) -> tuple[str, list[int]]:
        if self.style == "chat":
            text = self.tokenizer.apply_chat_template(to_messages(conv), add_generation_prompt=True, tokenize=False)
        else:
            text = render_text(conv, self.style, add_generation_prompt=True)
            if self.style == "script" and self.tokenizer.bos_token and not text.startswith(self.tokenizer.bos_token):
                text = self.tokenizer.bos_token + text
        return text, list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def stop_rule(self, request: Request) -> StopRule:
        return StopRule(self.style, self.end_ids, self.decode)

    # generation ------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], options: DecodingOptions,
                 stop_factory: StopFactory | None = None) -> Iterator[Completion]:
        """Yield a completion per request as soon as it is finished.

        Work is batched longest first. When only an eighth of a batch is still generating and other work
        waits, those stragglers leave the batch and continue later as prompt + what they generated so far
        (re-prefilled), so one long reply never idles the whole batch. Continuations are batched with each
        other once a full batch of them has gathered (or nothing else is left): mixed with shorter fresh
        prompts they would pad every row to their length.
        """
        stop_factory = stop_factory or self.stop_rule
        fresh = sorted((_Work(r, r.ids, [], stop_factory(r)) for r in requests), key=lambda w: (-len(w.ids), w.request.index))
        continuations: list[_Work] = []
        generator = self._torch.Generator(device=self.device).manual_seed(options.seed)
        while fresh or continuations:
            if continuations and (len(continuations) >= self.batch_size or not fresh):
                continuations.sort(key=lambda w: (-len(w.ids), w.request.index))
                batch, continuations = continuations[: self.batch_size], continuations[self.batch_size:]
            else:
                batch, fresh = fresh[: self.batch_size], fresh[self.batch_size:]
            leftovers = yield from self._generate_batch(batch, options, generator, evict=bool(fresh or continuations))
            continuations.extend(leftovers)

    def _select(self, logits, options: DecodingOptions, generator):
        torch = self._torch
        if options.sampling == "greedy":
            return logits.argmax(dim=-1)
        logits = logits.float() / max(options.temperature, 1e-5)
        if options.top_k > 0:
            kth = torch.topk(logits, min(options.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if 0 < options.top_p < 1:
            sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative - sorted_logits.softmax(dim=-1) > options.top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)

    def _generate_batch(self, batch: Sequence["_Work"], options: DecodingOptions, generator, *,
                        evict: bool) -> Iterator[Completion]:
        """Prefill ``batch`` (left-padded, in column chunks), then decode; returns the evicted stragglers."""
        torch = self._torch
        from transformers import DynamicCache

        rows, width = len(batch), max(len(w.ids) for w in batch)
        input_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((rows, width), dtype=torch.long)
        for row, work in enumerate(batch):
            input_ids[row, width - len(work.ids):] = torch.tensor(work.ids, dtype=torch.long)
            attention[row, width - len(work.ids):] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        chunk = max(16, self.prefill_tokens // rows)
        started = time.perf_counter()
        self.stats["batches"] += 1
        self.stats["prefill_tokens"] += sum(len(w.ids) for w in batch)
        self.stats["padded_tokens"] += rows * width
        with torch.inference_mode():
            for begin in range(0, width, chunk):
                end = min(width, begin + chunk)
                out = self.model(input_ids=input_ids[:, begin:end], attention_mask=attention[:, :end],
                                 position_ids=positions[:, begin:end], past_key_values=cache, use_cache=True,
                                 logits_to_keep=1)
            logits = out.logits[:, -1, :]
            del out, input_ids
            if self.profile and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stats["prefill_seconds"] += time.perf_counter() - started
            alive = list(range(rows))  # batch rows still in the tensors, in order
            finished: set[int] = set()
            position = positions[:, -1:]
            step = 0
            while True:
                step += 1
                self.stats["decode_steps"] += 1
                tokens = self._select(logits, options, generator)
                for slot, token in enumerate(tokens.tolist()):
                    row = alive[slot]
                    if row in finished:
                        continue
                    work = batch[row]
                    work.generated.append(token)
                    done = work.stop.push(token)
                    if done or len(work.generated) >= options.max_new_tokens:
                        finished.add(row)
                        yield Completion(work.request.index, self.decode(work.generated), len(work.generated),
                                         "stop" if done else "length")
                active = [slot for slot, row in enumerate(alive) if row not in finished]
                if not active:
                    return []
                if evict and step >= 4 and len(active) * 8 <= rows:
                    self.evicted += len(active)
                    return [_Work(batch[alive[s]].request, batch[alive[s]].request.ids + tuple(batch[alive[s]].generated),
                                  batch[alive[s]].generated, batch[alive[s]].stop) for s in active]
                if len(active) <= len(alive) * 3 // 4:
                    # Compact the batch (copies the cache): only when a quarter of the rows are done.
                    index = torch.tensor(active, device=self.device)
                    cache.batch_select_indices(index)
                    attention, position, tokens = attention[index], position[index], tokens[index]
                    alive = [alive[slot] for slot in active]
                attention = torch.cat([attention, attention.new_ones(attention.shape[0], 1)], dim=1)
                position = position + 1
                out = self.model(input_ids=tokens[:, None], attention_mask=attention, position_ids=position,
                                 past_key_values=cache, use_cache=True, logits_to_keep=1)
                logits = out.logits[:, -1, :]
                del out


@dataclass
class _Work:
    """A request in flight: the ids to prefill (prompt, plus what was generated before an eviction)."""

    request: Request
    ids: tuple[int, ...]
    generated: list[int]
    stop: object


def _attach_adapter(model, adapter_dir: Path, base: Path):
    """Load a LoRA adapter with PEFT and merge it (faster generation); mismatches become one line."""
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, adapter_dir)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "size mismatch" in str(exc):
            first = "tensor shapes differ (" + first[:160] + ")"
        raise HaruhiError(f"adapter {adapter_dir} does not match the base model {base}: {first}; "
                          "pass the base model it was trained on") from exc
    try:
        return model.merge_and_unload()
    except Exception:  # noqa: BLE001 - unmerged LoRA still generates correctly, only slower
        return model


# -- llama.cpp ------------------------------------------------------------------------------------

def open_engine(path: str | os.PathLike, *, n_gpu_layers: int = -1, n_threads: int | None = None):
    """Load a GGUF through the shared loader (:func:`haruhi_tui.core.engine.open_gguf`: friendly errors, style)."""
    from haruhi_tui.core.engine import open_gguf

    return open_gguf(path, n_ctx=512, n_gpu_layers=n_gpu_layers, n_threads=n_threads)


@dataclass
class _Slot:
    seq: int
    request: Request | None = None
    tokens: list[int] = field(default_factory=list)   # what this sequence's KV cache holds, in order
    pending: list[int] = field(default_factory=list)  # prompt tokens still to decode
    generated: list[int] = field(default_factory=list)
    pieces: list[bytes] = field(default_factory=list)
    stop: object = None
    sampler: object = None
    next_token: int | None = None


class GGUFGenerator:
    """A GGUF model on llama.cpp, generating ``parallel`` sequences at once (continuous batching).

    Prompts, tokens and end-of-generation come from the shared :class:`haruhi_tui.core.engine.Engine`; only the
    multi-sequence decoding loop is ours (a second context on the same weights).
    """

    engine = "llama.cpp"

    def __init__(self, engine, *, parallel: int = 8, n_batch: int = 2048, reuse_prefix: bool = True,
                 n_threads: int | None = None) -> None:
        import llama_cpp

        self.llm_engine = engine
        self.path = str(engine.path)
        self.lib = llama_cpp
        self.model_ptr = engine.llama.model
        self.style: Style = engine.style
        self.architecture = engine.info.architecture
        self.parallel, self.n_batch = max(1, parallel), n_batch
        self.reuse_prefix = reuse_prefix
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.n_ctx_train = engine.info.context_length

    @classmethod
    def load(cls, path: str | os.PathLike, *, parallel: int = 8, n_gpu_layers: int = -1, reuse_prefix: bool = True,
             n_threads: int | None = None) -> "GGUFGenerator":
        return cls(open_engine(path, n_gpu_layers=n_gpu_layers, n_threads=n_threads), parallel=parallel,
                   reuse_prefix=reuse_prefix, n_threads=n_threads)

    def describe(self) -> dict:
        return {"engine": self.engine, "model": self.path, "style": self.style, "architecture": self.architecture,
                "parallel": self.parallel, "prefix_reuse": self.reuse_prefix}

    # prompts ---------------------------------------------------------------------------------

    def encode(self, conv: Conversation) -> tuple[str, list[int]]:
        text = self.llm_engine.render(conv)
        return text, list(self.llm_engine.tokenize_prompt(text))

    def _piece(self, token: int) -> bytes:
        return self.llm_engine.piece(token, True)

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self._piece(t) for t in ids).decode("utf-8", "replace")

    def stop_rule(self, request: Request) -> StopRule:
        stops = self.llm_engine.stops() if self.style == "chat" else None
        return _EogStopRule(self.style, (), self.decode, self.llm_engine.is_end_of_generation, stops)

    # generation ------------------------------------------------------------------------------

    def _sampler(self, options: DecodingOptions, seed: int):
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if options.sampling == "greedy":
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(options.top_k))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(options.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(options.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _context(self, per_sequence: int):
        lib = self.lib
        params = lib.llama_context_default_params()
        params.n_seq_max = self.parallel
        params.n_ctx = per_sequence * self.parallel + self.n_batch
        params.n_batch = self.n_batch
        params.n_ubatch = min(512, self.n_batch)
        params.kv_unified = os.environ.get("HARUHI_KV_UNIFIED", "1") == "1"
        params.swa_full = True  # keep whole prompts in sliding-window layers too, so prefixes can be reused
        params.n_threads = params.n_threads_batch = self.n_threads
        params.no_perf = True
        ctx = lib.llama_init_from_model(self.model_ptr, params)
        if not ctx:
            raise HaruhiError(f"llama.cpp could not create a context of {params.n_ctx} tokens for {self.parallel} sequences: "
                              "lower --parallel or --max-new-tokens")
        return ctx

    def generate(self, requests: Sequence[Request], options: DecodingOptions,
                 stop_factory: StopFactory | None = None) -> Iterator[Completion]:
        """Yield completions as they finish; prompts sorted by content so neighbours share prefixes."""
        if not requests:
            return
        lib = self.lib
        stop_factory = stop_factory or self.stop_rule
        longest = max(len(r.ids) for r in requests)
        per_sequence = longest + options.max_new_tokens + 1
        if self.n_ctx_train and longest + options.max_new_tokens > self.n_ctx_train:
            raise HaruhiError(f"a prompt of {longest} tokens plus --max-new-tokens {options.max_new_tokens} exceeds the "
                              f"model's context ({self.n_ctx_train}): lower --max-new-tokens")
        queue = deque(sorted(requests, key=lambda r: (r.ids, r.index)))
        ctx = self._context(per_sequence)
        batch = lib.llama_batch_init(self.n_batch, 0, 1)
        mem = lib.llama_get_memory(ctx)
        slots = [_Slot(seq) for seq in range(self.parallel)]
        try:
            while queue or any(s.request is not None for s in slots):
                for slot in slots:
                    if slot.request is None and queue:
                        self._assign(slot, queue.popleft(), slots, mem, options, stop_factory)
                entries = self._fill_batch(batch, slots)
                rc = lib.llama_decode(ctx, batch)
                if rc != 0:
                    raise HaruhiError(f"llama.cpp decode failed (code {rc}): the KV cache is full; lower --parallel")
                for index, slot in entries:
                    token = lib.llama_sampler_sample(slot.sampler, ctx, index)
                    slot.generated.append(token)
                    slot.pieces.append(self._piece(token))
                    done = slot.stop.push(token)
                    if done or len(slot.generated) >= options.max_new_tokens:
                        yield Completion(slot.request.index, b"".join(slot.pieces).decode("utf-8", "replace"),
                                         len(slot.generated), "stop" if done else "length")
                        self._release(slot, mem)
                    else:
                        slot.next_token = token
        finally:
            for slot in slots:
                if slot.sampler is not None:
                    lib.llama_sampler_free(slot.sampler)
                    slot.sampler = None
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)

    def _assign(self, slot: _Slot, request: Request, slots: list[_Slot], mem, options: DecodingOptions,
                stop_factory: StopFactory) -> None:
        """Start ``request`` in ``slot``, reusing the longest cached prefix among all slots' KV caches."""
        lib = self.lib
        ids = list(request.ids)
        keep, source = 0, None
        if self.reuse_prefix:
            for other in slots:
                n = _common_prefix(other.tokens, ids)
                if n > keep:
                    keep, source = n, other
        keep = min(keep, len(ids) - 1)  # always decode at least the last prompt token (for its logits)
        if source is not slot:
            lib.llama_memory_seq_rm(mem, slot.seq, -1, -1)
            if source is not None and keep > 0:
                lib.llama_memory_seq_cp(mem, source.seq, slot.seq, 0, keep)
            else:
                keep = 0
        elif not lib.llama_memory_seq_rm(mem, slot.seq, keep, -1):
            lib.llama_memory_seq_rm(mem, slot.seq, -1, -1)
            keep = 0
        slot.request, slot.tokens, slot.pending = request, ids[:keep], ids[keep:]
        slot.generated, slot.pieces, slot.next_token = [], [], None
        slot.stop = stop_factory(request)
        if slot.sampler is not None:
            lib.llama_sampler_free(slot.sampler)
        slot.sampler = self._sampler(options, options.seed + request.index)

    def _release(self, slot: _Slot, mem) -> None:
        # The finished sequence's cache stays (``slot.tokens`` says what it holds): a later prompt may reuse it.
        slot.request, slot.next_token = None, None

    def _fill_batch(self, batch, slots: list[_Slot]) -> list[tuple[int, _Slot]]:
        """One step's tokens: the next token of every generating slot, then prompt chunks up to ``n_batch``."""
        n = 0
        entries: list[tuple[int, _Slot]] = []

        def add(slot: _Slot, token: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = len(slot.tokens)
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq
            batch.logits[n] = logits
            slot.tokens.append(token)
            if logits:
                entries.append((n, slot))
            n += 1

        for slot in slots:
            if slot.request is not None and slot.next_token is not None:
                add(slot, slot.next_token, True)
                slot.next_token = None
        for slot in slots:
            if slot.request is None or not slot.pending or n >= self.n_batch:
                continue
            take = min(len(slot.pending), self.n_batch - n)
            chunk, slot.pending = slot.pending[:take], slot.pending[take:]
            for i, token in enumerate(chunk):
                add(slot, token, not slot.pending and i == take - 1)
        batch.n_tokens = n
        return entries


class _EogStopRule(StopRule):
    """A :class:`StopRule` that also ends at any token llama.cpp marks end-of-generation."""

    def __init__(self, style, end_ids, decode, is_eog: Callable[[int], bool], stops=None) -> None:
        super().__init__(style, end_ids, decode, stops)
        self._is_eog = is_eog

    def push(self, token: int) -> bool:
        # llama.cpp may list harmony's <|end|> as end-of-generation; it only ends the final message.
        if token != _END and self._is_eog(token):
            self._ids.append(token)
            return True
        return super().push(token)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# -- choosing an engine ---------------------------------------------------------------------------

def load_generator(model: str | os.PathLike, adapter: str | os.PathLike | None = None, *, device: str | None = None,
                   dtype: str | None = None, batch_size: int | None = None, parallel: int | None = None,
                   n_gpu_layers: int = -1, attn: str = "auto"):
    """A GGUF file -> llama.cpp; a model folder -> transformers (+ the LoRA ``adapter``)."""
    path = Path(model)
    if not path.exists():
        raise HaruhiError(f"model not found: {path} (pass a .gguf file or a Hugging Face model folder)")
    if path.is_file():
        if adapter:
            raise HaruhiError("--adapter is for Hugging Face model folders; for a GGUF merge the adapter first with haruhi-convert")
        with path.open("rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise HaruhiError(f"{path} is not a GGUF file (pass a .gguf file or a Hugging Face model folder)")
        import llama_cpp

        default_parallel = 16 if (n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()) else 4
        return GGUFGenerator.load(path, parallel=parallel or batch_size or default_parallel, n_gpu_layers=n_gpu_layers)
    return HFGenerator.load(path, adapter, device=device, dtype=dtype, attn=attn, batch_size=batch_size)


def elapsed_rate(done: int, started: float) -> tuple[float, float]:
    elapsed = max(time.perf_counter() - started, 1e-9)
    return elapsed, done / elapsed


def eta_seconds(done: int, total: int, rate: float) -> float | None:
    if rate <= 0 or done >= total:
        return 0.0 if done >= total else None
    return (total - done) / rate if math.isfinite(rate) else None
