"""Generation on transformers: an HF checkpoint (optionally + a LoRA adapter) for many prompts at once.

Two engines. ``continuous`` (:mod:`.continuous`, for the model types it supports: gpt-oss, Gemma 3):
continuous batching over a KV cache of fixed slots, prompts that share a prefix computed once, packed
prompt chunks without padding, CUDA graphs for decode steps. ``batched`` (any model, and the reference the
other is measured against): prompts sorted by length and left-padded into large batches; the prompt is
prefilled in chunks of columns (bounded memory), then one token per step for every live row; finished rows
are dropped from the batch (the KV cache is compacted when a quarter of the rows are done), and a few
stragglers move to a later batch rather than idle a whole one. gpt-oss runs on :mod:`.sink_attention` there.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.prompt_format import Conversation, Style, detect_style, render_text, to_messages

from ..checkpoint_check import adapter_problem
from .continuous import ContinuousEngine, engine_supports
from .decoding import Completion, DecodingOptions, Request
from .sampling import select_tokens
from .sink_attention import SINK_ATTENTION, register_sink_attention
from .stops import StopFactory, StopRule

ENGINES = ("auto", "continuous", "batched")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def check_adapter(adapter: Path, base: Path, base_config) -> None:
    """Refuse an adapter made for another model before PEFT fails deep inside (one-line reason)."""
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise HaruhiError(f"{adapter} is not a LoRA adapter (no adapter_config.json): pass the folder "
                          "`haruhi train` wrote")
    adapter_config = _read_json(config_file)
    if not adapter_config or (problem := adapter_problem(adapter)):  # cut short, damaged: never loaded
        raise HaruhiError(f"the adapter {adapter} is damaged ({problem or 'adapter_config.json is not valid JSON'}); "
                          "train again or restore it")
    origin = adapter_config.get("base_model_name_or_path") or ""
    origin_config = _read_json(Path(origin) / "config.json") if origin and Path(origin).is_dir() else {}
    for key in ("model_type", "hidden_size", "num_hidden_layers", "num_local_experts", "vocab_size"):
        ours, theirs = getattr(base_config, key, None), origin_config.get(key)
        if ours is not None and theirs is not None and ours != theirs:
            raise HaruhiError(
                f"adapter {adapter} was trained on {origin} ({key}={theirs}), which does not match {base} "
                f"({key}={ours}): "
                "pass the base model the adapter was trained on")


class HFGenerator:
    """A transformers model (optionally + LoRA) generating for many prompts at once."""

    engine = "transformers"

    def __init__(self, model, tokenizer, style: Style, *, path: str, adapter: str | None = None,
                 batch_size: int | None = None, prefill_tokens: int | None = None, engine: str = "auto",
                 share_prefixes: bool = True, cuda_graphs: bool = True, kernel: str = "auto",
                 fused_experts: bool | None = None) -> None:
        import torch

        self.model, self.tokenizer, self.style = model, tokenizer, style
        self.path, self.adapter = path, adapter
        self.device = next(model.parameters()).device
        cuda = self.device.type == "cuda"
        if engine not in ENGINES:
            raise HaruhiError(f"the transformers engine is one of {', '.join(ENGINES)}, not {engine!r}")
        if engine == "continuous" and not engine_supports(model):
            raise HaruhiError(f"the continuous engine does not support {model.config.model_type} models; "
                              "use the batched one")
        # auto: continuous wherever the model is supported (gpt-oss, Gemma 3), batched otherwise
        continuous = engine in ("continuous", "auto")
        if fused_experts is None:  # on a GPU (gpt-oss only, as the engine decides: 40.7 against 33.2 samples/s
            # on an H200); not under an unmerged LoRA, whose expert deltas only transformers' experts code applies
            fused_experts = cuda and not hasattr(model, "peft_config")
        self.engine_name = "continuous" if continuous and engine_supports(model) else "batched"
        self.prefill_tokens = prefill_tokens or (32768 if cuda else 2048)
        #: The continuous engine (None: batched); its ``stats`` and ``notes`` describe the last run.
        self.continuous = ContinuousEngine(model, slots=batch_size, prefill_tokens=self.prefill_tokens,
                                           share_prefixes=share_prefixes, cuda_graphs=cuda_graphs, kernel=kernel,
                                           fused_experts=fused_experts) if self.engine_name == "continuous" else None
        self.batch_size = batch_size or (self._auto_batch_size() if cuda else 8)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.end_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
        self.evicted = 0  # stragglers moved to a later batch (diagnostics)
        #: Where the time goes (seconds, tokens, steps); exact only with ``profile`` (adds a GPU sync per batch).
        self.profile = False
        self.stats = {"prefill_seconds": 0.0, "prefill_tokens": 0, "padded_tokens": 0, "decode_steps": 0,
                      "decode_rows": 0, "batches": 0}
        self._torch = torch

    # loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, adapter: str | os.PathLike | None = None, *, device: str | None = None,
             dtype: str | None = None, attn: str = "auto", batch_size: int | None = None,
             prefill_tokens: int | None = None, engine: str = "auto", share_prefixes: bool = True,
             cuda_graphs: bool = True, kernel: str = "auto") -> "HFGenerator":
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        base = Path(path)
        if not (base / "config.json").is_file():
            raise HaruhiError(f"{base} is not a Hugging Face model folder (no config.json); pass a .gguf file or a "
                              "model folder")
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
        own_tokenizer = adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file()
        tokenizer_dir = adapter_dir if own_tokenizer else base
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
                   batch_size=batch_size, prefill_tokens=prefill_tokens, engine=engine, share_prefixes=share_prefixes,
                   cuda_graphs=cuda_graphs, kernel=kernel)

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
                "attention": self.model.config._attn_implementation,
                "batch_size": (self.continuous.stats.get("slots") if self.continuous else None) or self.batch_size}

    def summary(self) -> str | None:
        """How the last run went, in a line for the log (the continuous engine)."""
        stats = self.continuous.stats if self.continuous is not None else None
        if not stats:
            return None
        notes = "".join(f"; {note}" for note in self.continuous.notes)
        return (f"continuous engine: {stats['slots']} slots, {stats['shared_tokens']} of {stats['prompt_tokens']} "
                f"prompt tokens reused from shared prefixes, {stats['decode_steps']} decode steps "
                f"({stats['graph_steps']} from CUDA graphs), {stats['kernel']} attention{notes}")

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
        """Yield a completion per request as soon as it is finished (by the continuous engine where it applies)."""
        stop_factory = stop_factory or self.stop_rule
        generator = self._torch.Generator(device=self.device).manual_seed(options.seed)
        if self.continuous is not None:
            yield from self.continuous.generate(requests, options, stop_factory, self.decode, generator)
        else:
            yield from self._generate_batched(requests, options, stop_factory, generator)

    def _generate_batched(self, requests: Sequence[Request], options: DecodingOptions, stop_factory: StopFactory,
                          generator) -> Iterator[Completion]:
        """The batched engine. Work is batched longest first.

        When only an eighth of a batch is still generating and other work waits, those stragglers leave the
        batch and continue later as prompt + what they generated so far (re-prefilled), so one long reply
        never idles the whole batch. Continuations are batched with each
        other once a full batch of them has gathered (or nothing else is left): mixed with shorter fresh
        prompts they would pad every row to their length.
        """
        fresh = sorted((_Work(r, r.ids, [], stop_factory(r)) for r in requests),
                       key=lambda w: (-len(w.ids), w.request.index))
        continuations: list[_Work] = []
        while fresh or continuations:
            if continuations and (len(continuations) >= self.batch_size or not fresh):
                continuations.sort(key=lambda w: (-len(w.ids), w.request.index))
                batch, continuations = continuations[: self.batch_size], continuations[self.batch_size:]
            else:
                batch, fresh = fresh[: self.batch_size], fresh[self.batch_size:]
            leftovers = yield from self._generate_batch(batch, options, generator, evict=bool(fresh or continuations))
            continuations.extend(leftovers)

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
                self.stats["decode_rows"] += len(alive)
                tokens = select_tokens(logits, options, generator)
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
                    stragglers = [batch[alive[s]] for s in active]
                    return [_Work(w.request, w.request.ids + tuple(w.generated), w.generated, w.stop)
                            for w in stragglers]
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

