"""Continuous batching on transformers with shared prompt prefixes, over a KV cache of fixed slots.

Requests are served in sorted order of their ids, so samples of one character and scene are neighbours. A
request takes a free slot (preferring the one whose cached prompt it shares most of, kept in place), copies
the longest prefix any slot has computed for it (a persona, retrieved scenes, the scene so far) and
prefills only the rest; when a slot is still computing a longer shared prefix, the request waits a forward
for it instead of computing it again. Prompt chunks of several requests and the next token of every
generating row go through the model as one packed forward (no padding, see :mod:`.slot_attention`); while
no prompt work is due, decode steps replay CUDA graphs (:mod:`.decode_graphs`). Finished rows free their
slot at once and the next prompt joins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from .decode_graphs import DecodeGraphs, buckets_for
from .decoding import Completion, DecodingOptions, Request
from .fused_experts import FUSED_EXPERTS, register_fused_experts
from .fused_experts import warm_up as warm_up_experts
from .prefix_share import SortedPrompts, best_source
from .sampling import select_tokens
from .slot_attention import SlotCache, check_flash, flash_available, make_batch, register_slot_attention

#: Model types whose transformers code takes per-layer-type mask dicts and runs attention through the
#: attention interface, so the slot engine can drive them (tested: gpt-oss, Gemma 3).
SUPPORTED_MODEL_TYPES = ("gpt_oss", "gemma3_text")
#: A request waits for a slot still computing a longer shared prefix only when it saves this many tokens.
MIN_WAIT_GAIN = 8
#: Decode-only steps after which waiting prompt work is run even if it is less than a quarter of the budget.
MAX_PREFILL_DELAY = 8


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def engine_supports(model) -> bool:
    return getattr(model.config, "model_type", None) in SUPPORTED_MODEL_TYPES and \
        getattr(model.config, "attn_logit_softcapping", None) is None


@dataclass
class _Row:
    """A request being served in a slot."""

    request: Request
    order: int                 # its place in serving order
    prompt: np.ndarray
    stop: object
    started: bool = False      # its reused prefix is in place; the rest of the prompt is being computed
    generated: list[int] = field(default_factory=list)
    next_token: int | None = None


@dataclass
class _Slot:
    index: int
    owner: int | None = None   # serving index whose tokens fill positions [0, filled)
    filled: int = 0
    row: _Row | None = None


class ContinuousEngine:
    """Generation for many prompts at once on a transformers model the slot engine supports."""

    def __init__(self, model, *, slots: int | None, prefill_tokens: int, share_prefixes: bool = True,
                 cuda_graphs: bool = True, kernel: str = "auto", fused_experts: bool = False) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.slots_wanted = slots
        self.prefill_tokens = prefill_tokens
        self.share_prefixes = share_prefixes
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.kernel_wanted = kernel
        self.kernel = "reference"
        self.fused_experts = fused_experts and getattr(model.config, "model_type", None) == "gpt_oss"
        self.notes: list[str] = []   # why a fast path is off (in the last run)
        config = model.config
        self.layers = config.num_hidden_layers
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.masks = {layer_type: None for layer_type in set(getattr(config, "layer_types", None) or
                                                              ["full_attention"])}
        self.stats: dict = {}
        self.graphs: DecodeGraphs | None = None

    # setup ----------------------------------------------------------------------------------------

    def _choose_kernel(self) -> None:
        if self.kernel_wanted == "reference" or not flash_available(self.device):
            self.kernel = "reference"
            if self.kernel_wanted == "flash":
                raise ValueError("the flash attention kernel needs a CUDA GPU (sm80 or newer)")
            return
        problem = check_flash(heads=self.heads, kv_heads=self.kv_heads, head_dim=self.head_dim,
                              dtype=self.model.dtype, device=self.device,
                              sinks=getattr(self.model.config, "model_type", "") == "gpt_oss")
        if problem and self.kernel_wanted == "flash":
            raise RuntimeError(problem)
        self.kernel = "reference" if problem else "flash"
        if problem:
            self.notes.append(problem)

    def _slot_count(self, capacity: int) -> int:
        """Slots: as asked, else (CUDA) the KV cache of ``capacity``-token slots in the free memory left after a
        reserve for prefill activations, between 8 and 512; 8 on the CPU."""
        if self.slots_wanted:
            return self.slots_wanted
        if self.device.type != "cuda":
            return 8
        import torch

        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        reserve = max(4 << 30, self.prefill_tokens * (256 << 10))
        per_slot = capacity * SlotCache.bytes_per_token(layers=self.layers, kv_heads=self.kv_heads,
                                                        head_dim=self.head_dim, element_size=self.model.dtype.itemsize)
        return max(8, min(512, int((free - reserve) * 0.9 // per_slot)))

    def _step(self, batch):
        return self.model(input_ids=batch.input_ids[None], position_ids=batch.positions[None],
                          attention_mask=self.masks, use_cache=False, logits_to_keep=batch.logits_index
                          if batch.logits_index is not None else 0, slot_batch=batch).logits[0]

    # generation -----------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], options: DecodingOptions, stop_factory: Callable,
                 decode: Callable[[Sequence[int]], str], generator) -> Iterator[Completion]:
        import torch

        if not requests:
            return
        order = sorted(requests, key=lambda r: (r.ids, r.index))
        prompts = SortedPrompts([np.asarray(r.ids, dtype=np.int64) for r in order])
        capacity = max(len(r.ids) for r in order) + options.max_new_tokens
        self.notes = []
        self._choose_kernel()
        slot_count = self._slot_count(capacity)
        experts = FUSED_EXPERTS if self.fused_experts else getattr(self.model.config, "_experts_implementation", None)
        self.stats = {"slots": slot_count, "capacity": capacity, "kernel": self.kernel, "cuda_graphs": False,
                      "experts": experts,
                      "prompt_tokens": int(sum(len(p) for p in prompts.prompts)), "prefill_tokens": 0,
                      "shared_tokens": 0, "generated_tokens": 0, "decode_rows_computed": 0, "forwards": 0,
                      "prefill_forwards": 0, "decode_steps": 0, "graph_steps": 0, "prefill_seconds": 0.0,
                      "decode_seconds": 0.0, "setup_seconds": 0.0}
        started = time.perf_counter()
        cache = SlotCache(layers=self.layers, slots=slot_count, capacity=capacity, kv_heads=self.kv_heads,
                          head_dim=self.head_dim, dtype=self.model.dtype, device=self.device)
        previous_attention = self.model.config._attn_implementation
        previous_experts = getattr(self.model.config, "_experts_implementation", None)
        self.model.set_attn_implementation(register_slot_attention())
        fused = False
        try:
            with torch.inference_mode():
                fused = self.fused_experts and self._fuse_experts(previous_experts)
                self.graphs = self._capture(cache) if self.cuda_graphs else None
                self.stats["cuda_graphs"] = self.graphs is not None
                self.stats["setup_seconds"] = round(time.perf_counter() - started, 3)
                yield from self._serve(order, prompts, cache, options, stop_factory, decode, generator)
        finally:
            self.graphs = None
            self.model.set_attn_implementation(previous_attention)
            if fused:
                self.model.set_experts_implementation(previous_experts)

    def _fuse_experts(self, previous: str | None) -> bool:
        """Switch gpt-oss's experts to :mod:`.fused_experts` and compile them now; on failure keep ``previous``."""
        try:
            self.model.set_experts_implementation(register_fused_experts())
            warm_up_experts(self.model)
            return True
        except Exception as exc:  # noqa: BLE001 - transformers' experts are always there to fall back on
            self.model.set_experts_implementation(previous)
            self.stats["experts"] = previous
            self.notes.append(f"fused experts off: {_reason(exc)}")
            return False

    def _capture(self, cache: SlotCache) -> DecodeGraphs | None:
        try:
            return DecodeGraphs(self._step, cache, self.kernel, buckets_for(cache.slots), self.device)
        except Exception as exc:  # noqa: BLE001 - eager decoding is always there to fall back on
            self.notes.append(f"CUDA graphs off: {_reason(exc)}")
            return None

    def _serve(self, order, prompts: SortedPrompts, cache: SlotCache, options, stop_factory, decode, generator):
        slots = [_Slot(i) for i in range(cache.slots)]
        queue = 0
        idle_steps = 0
        while True:
            free = [s for s in slots if s.row is None]
            while queue < len(order) and free:
                self._admit(free, queue, order[queue], prompts, stop_factory)
                free = [s for s in free if s.row is None]
                queue += 1
            busy = [s for s in slots if s.row is not None]
            waiting = self._start_waiting(busy, slots, prompts, cache)
            decoding = [s for s in busy if s.row.next_token is not None]
            prefilling = sorted((s for s in busy if s.row.started and s.row.next_token is None),
                                key=lambda s: s.row.order)
            if not decoding and not prefilling:
                if busy:
                    raise RuntimeError("slot engine stalled: requests wait for a prefix nobody computes")
                return
            pending = waiting + sum(len(s.row.prompt) - s.filled for s in prefilling)
            more_coming = queue < len(order) or any(not s.row.started for s in busy)
            if prefilling and (not decoding or pending >= self.prefill_tokens // 4 or not more_coming
                               or idle_steps >= MAX_PREFILL_DELAY):
                idle_steps = 0
                entries = self._mixed_forward(decoding, prefilling, cache, options, generator)
            else:
                idle_steps += 1 if prefilling else 0
                entries = self._decode_forward(decoding, cache, options, generator)
            for slot, token in entries:
                done = self._accept(slot, token, options)
                if done is not None:
                    yield Completion(slot.row.request.index, decode(slot.row.generated), len(slot.row.generated),
                                     done)
                    slot.row = None

    # scheduling -----------------------------------------------------------------------------------

    def _admit(self, free: list[_Slot], i: int, request: Request, prompts: SortedPrompts, stop_factory) -> None:
        """Put request ``i`` (serving order) in the free slot whose cached prompt it shares most of."""
        chosen, keep = free[0], 0
        if self.share_prefixes:
            held = [s for s in free if s.owner is not None]
            for slot, overlap in zip(held, prompts.shared_with(i, [s.owner for s in held])):
                usable = int(min(overlap, slot.filled, prompts.lengths[slot.owner], len(request.ids) - 1))
                if usable > keep:
                    chosen, keep = slot, usable
        chosen.owner, chosen.filled = i, keep
        chosen.row = _Row(request, i, prompts.prompts[i], stop_factory(request))

    def _start_waiting(self, busy: list[_Slot], slots: list[_Slot], prompts: SortedPrompts, cache: SlotCache) -> int:
        """Give each admitted request its shared prefix (copied from the best slot) unless a slot still
        computing a longer one is worth waiting for. Returns the prompt tokens the waiting ones will compute."""
        waiters = sorted((s for s in busy if not s.row.started), key=lambda s: s.row.order)
        if not waiters:
            return 0
        waiting = 0
        held = [s for s in slots if s.owner is not None]
        where = {s.index: k for k, s in enumerate(held)}
        index = np.array([s.index for s in held], dtype=np.int64)
        owners = np.array([s.owner for s in held], dtype=np.int64)
        computed = np.array([min(s.filled, int(prompts.lengths[s.owner])) for s in held], dtype=np.int64)
        computing = np.array([s.row is not None and s.row.started and s.row.next_token is None for s in held])
        for slot in waiters:
            row = slot.row
            if self.share_prefixes:
                source = best_source(prompts, row.order, index, owners, computed, computing)
                if source.soon >= source.now + MIN_WAIT_GAIN:
                    waiting += len(row.prompt) - source.soon
                    continue
                if source.slot is not None and source.now > slot.filled:
                    cache.copy(source.slot, slot.index, slot.filled, source.now)
                    slot.filled = source.now
                    computed[where[slot.index]] = slot.filled
            row.started = True
            if slot.owner is not None and slot.index in where:
                computing[where[slot.index]] = True
            self.stats["shared_tokens"] += slot.filled
        return waiting

    def _mixed_forward(self, decoding: list[_Slot], prefilling: list[_Slot], cache, options, generator):
        """One eager forward: every generating row's next token, then prompt chunks up to the token budget."""
        layout, ids, wants = [], [], []
        for slot in decoding:
            layout.append((slot.index, slot.filled, 1))
            ids.append(slot.row.next_token)
            wants.append(True)
        budget = max(self.prefill_tokens - len(decoding), 1)
        chunks = []
        for slot in prefilling:
            if budget <= 0:
                break
            take = min(len(slot.row.prompt) - slot.filled, budget)
            budget -= take
            layout.append((slot.index, slot.filled, take))
            ids.extend(slot.row.prompt[slot.filled: slot.filled + take].tolist())
            wants.append(slot.filled + take == len(slot.row.prompt))
            chunks.append((slot, take))
        began = time.perf_counter()
        batch = make_batch(cache, self.kernel, layout, self.device, ids=ids, logits=wants)
        tokens = select_tokens(self._step(batch), options, generator).tolist()
        self.stats["prefill_seconds"] += time.perf_counter() - began
        self.stats["forwards"] += 1
        self.stats["prefill_forwards"] += 1
        self.stats["prefill_tokens"] += sum(take for _, take in chunks)
        self.stats["decode_rows_computed"] += len(decoding)
        receivers = list(decoding)
        for slot in decoding:
            slot.filled += 1
        for slot, take in chunks:
            slot.filled += take
            if slot.filled == len(slot.row.prompt):
                receivers.append(slot)
        return list(zip(receivers, tokens))

    def _decode_forward(self, decoding: list[_Slot], cache, options, generator):
        """One token for every generating row: a CUDA graph replay when one fits, else an eager forward."""
        began = time.perf_counter()
        ids = [s.row.next_token for s in decoding]
        if self.graphs is not None and self.graphs.fits(len(decoding)):
            logits = self.graphs.run(ids, [s.index for s in decoding], [s.filled for s in decoding])
            self.stats["graph_steps"] += 1
            self.stats["decode_rows_computed"] += next(b for b in self.graphs.buckets if b >= len(decoding))
        else:
            batch = make_batch(cache, self.kernel, [(s.index, s.filled, 1) for s in decoding], self.device, ids=ids,
                               logits=[True] * len(decoding))
            logits = self._step(batch)
            self.stats["decode_rows_computed"] += len(decoding)
        tokens = select_tokens(logits, options, generator).tolist()
        self.stats["decode_seconds"] += time.perf_counter() - began
        self.stats["forwards"] += 1
        self.stats["decode_steps"] += 1
        for slot in decoding:
            slot.filled += 1
        return list(zip(decoding, tokens))

    def _accept(self, slot: _Slot, token: int, options: DecodingOptions) -> str | None:
        """Record a sampled token; ``stop``/``length`` when the row is finished, else None."""
        row = slot.row
        row.generated.append(token)
        self.stats["generated_tokens"] += 1
        if row.stop.push(token):
            return "stop"
        if len(row.generated) >= options.max_new_tokens:
            return "length"
        row.next_token = token
        return None
