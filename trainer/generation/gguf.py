"""Continuous batching on llama.cpp for a GGUF model: ``parallel`` sequences on one context.

A slot that finishes takes the next prompt at once; prompt chunks and generated tokens of all slots share
every ``llama_decode``. Prompts are served in sorted order, so prompts sharing a start (a character's
persona, a scene so far) are neighbours, and a new prompt reuses the longest prefix already in any slot's KV
cache (``llama_memory_seq_cp`` shares those cells with its sequence) instead of evaluating it again; when
another slot is still evaluating a longer shared prefix, the new prompt waits for it. Prompts, tokens and
end-of-generation come from the shared llama.cpp engine of :mod:`haruhi_tui.core`; only the multi-sequence
loop is ours.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.prompt_format import Conversation, Style

from .decoding import Completion, DecodingOptions, Request
from .stops import EogStopRule, StopFactory, StopRule

#: A prompt waits for a slot still evaluating a longer shared prefix only when it saves this many tokens.
MIN_WAIT_GAIN = 8


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
    waiting: bool = False                              # its prompt waits for a prefix another slot evaluates


class GGUFGenerator:
    """A GGUF model on llama.cpp, generating ``parallel`` sequences at once (continuous batching).

    Prompts, tokens and end-of-generation come from the shared :class:`haruhi_tui.core.engine.Engine`; only the
    multi-sequence decoding loop is ours (a second context on the same weights).
    """

    engine = "llama.cpp"

    def __init__(self, engine, *, parallel: int = 8, n_batch: int = 2048, reuse_prefix: bool = True,
                 wait_for_prefix: bool = True, n_threads: int | None = None) -> None:
        import llama_cpp

        self.llm_engine = engine
        self.path = str(engine.path)
        self.lib = llama_cpp
        self.model_ptr = engine.llama.model
        self.style: Style = engine.style
        self.architecture = engine.info.architecture
        self.parallel, self.n_batch = max(1, parallel), n_batch
        self.reuse_prefix = reuse_prefix
        self.wait_for_prefix = wait_for_prefix
        #: Prompt tokens evaluated and reused from other sequences' cells in the last run.
        self.stats = {"computed": 0, "reused": 0}
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.n_ctx_train = engine.info.context_length

    @classmethod
    def load(cls, path: str | os.PathLike, *, parallel: int = 8, n_gpu_layers: int = -1, reuse_prefix: bool = True,
             wait_for_prefix: bool = True, n_threads: int | None = None) -> "GGUFGenerator":
        return cls(open_engine(path, n_gpu_layers=n_gpu_layers, n_threads=n_threads), parallel=parallel,
                   reuse_prefix=reuse_prefix, wait_for_prefix=wait_for_prefix, n_threads=n_threads)

    def describe(self) -> dict:
        return {"engine": self.engine, "model": self.path, "style": self.style, "architecture": self.architecture,
                "parallel": self.parallel, "prefix_reuse": self.reuse_prefix}

    def summary(self) -> str | None:
        """How the last run went, in a line for the log."""
        total = self.stats["computed"] + self.stats["reused"]
        if not total:
            return None
        return f"llama.cpp: {self.stats['reused']} of {total} prompt tokens reused from shared prefixes"

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
        return EogStopRule(self.style, (), self.decode, self.llm_engine.is_end_of_generation, stops)

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
            raise HaruhiError(f"llama.cpp could not create a context of {params.n_ctx} tokens for {self.parallel} "
                              "sequences: lower --parallel or --max-new-tokens")
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
            raise HaruhiError(f"a prompt of {longest} tokens plus --max-new-tokens {options.max_new_tokens} exceeds "
                              f"the model's context ({self.n_ctx_train}): lower --max-new-tokens")
        queue = deque(sorted(requests, key=lambda r: (r.ids, r.index)))
        self.stats = {"computed": 0, "reused": 0}
        ctx = self._context(per_sequence)
        batch = lib.llama_batch_init(self.n_batch, 0, 1)
        mem = lib.llama_get_memory(ctx)
        slots = [_Slot(seq) for seq in range(self.parallel)]
        try:
            while queue or any(s.request is not None for s in slots):
                for slot in slots:
                    if slot.request is None and queue:
                        self._assign(slot, queue.popleft(), options, stop_factory)
                for slot in slots:
                    if slot.waiting:
                        self._start(slot, slots, mem)
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

    def _assign(self, slot: _Slot, request: Request, options: DecodingOptions, stop_factory: StopFactory) -> None:
        """Give ``request`` to ``slot``; its cache is set up by :meth:`_start` (maybe after waiting)."""
        lib = self.lib
        slot.request, slot.waiting = request, True
        slot.generated, slot.pieces, slot.next_token = [], [], None
        slot.stop = stop_factory(request)
        if slot.sampler is not None:
            lib.llama_sampler_free(slot.sampler)
        slot.sampler = self._sampler(options, options.seed + request.index)

    def _start(self, slot: _Slot, slots: list[_Slot], mem) -> None:
        """Reuse the longest prefix cached in any slot for the slot's prompt (unless a slot still evaluating a
        longer shared prefix is worth waiting for), drop the rest of its old cells, queue the rest of the prompt."""
        lib = self.lib
        ids = list(slot.request.ids)
        limit = len(ids) - 1  # always decode at least the last prompt token (for its logits)
        keep, source, soon = 0, None, 0
        if self.reuse_prefix:
            for other in slots:
                n = min(_common_prefix(other.tokens, ids), limit)
                if n > keep or (n == keep and other is slot and n > 0):
                    keep, source = n, other
                if other is not slot and other.request is not None and not other.waiting and other.pending:
                    soon = max(soon, min(_common_prefix(other.tokens + other.pending, ids), limit))
        if self.wait_for_prefix and soon >= keep + MIN_WAIT_GAIN:
            return
        slot.waiting = False
        if source is not slot:
            lib.llama_memory_seq_rm(mem, slot.seq, -1, -1)
            if source is not None and keep > 0:
                lib.llama_memory_seq_cp(mem, source.seq, slot.seq, 0, keep)
            else:
                keep = 0
        elif not lib.llama_memory_seq_rm(mem, slot.seq, keep, -1):
            lib.llama_memory_seq_rm(mem, slot.seq, -1, -1)
            keep = 0
        slot.tokens, slot.pending = ids[:keep], ids[keep:]
        self.stats["reused"] += keep
        self.stats["computed"] += len(ids) - keep

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


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i

