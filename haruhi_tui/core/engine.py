"""The llama.cpp engine: open a GGUF with friendly errors, render prompts in the model's style, stream replies.

Streaming is our own token loop over ``Llama.eval`` and :class:`~haruhi_tui.core.token_sampler.TokenSampler`
(the sampling of ``Llama.generate`` without its cost per vocabulary entry) rather than ``create_completion``,
because:

* gpt-oss output must be detokenized *with* special tokens so :class:`~haruhi_tui.core.harmony.HarmonyStreamParser`
  sees ``<|channel|>`` and can keep the analysis channel apart from what the character says (the
  :class:`~haruhi_tui.core.reply_stream.ReplyStream` of each reply says when it is over);
* the loop knows exactly how many prompt tokens came from the KV cache (the persona prefix is stable
  across turns, so a follow-up turn only evaluates the new tail), which the app shows and tests check;
* a stop request (a ``threading.Event``) is honoured between two tokens;
* the thread count is chosen token by token by measuring it (:mod:`~haruhi_tui.core.decode_threads`).

:meth:`Engine.prefill` evaluates a prompt ahead of time (the chat does it while the user types) and gives the
model up to a reply between two chunks, so a reply never waits for more than one chunk.

:func:`open_gguf` is the public entry point the app, the evaluator and the benchmarks use. Importing this
module loads llama.cpp's library before numpy (see the first import).
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

try:  # llama.cpp's libraries before numpy's (gguf_info and prompt_format below pull numpy in): with numpy
    # loaded first, a CUDA build of llama-cpp-python crashed while loading a model on the H100 test machine
    # (benchmarks/results/full-size/README.md)
    import llama_cpp as _llama_cpp  # noqa: F401
except Exception:  # not installed or broken: open_gguf says so when a model is opened
    pass

from . import harmony, openmp
from .decode_threads import ThreadChooser, candidate_counts
from .errors import ModelError
from .gguf_info import GGUFInfo, check_fits, read_gguf_info
from .harmony import Delta
from .prompt_format import Conversation, Style, opened_by_user, render_text, stop_strings, to_messages
from .reply_stream import ReplyStream
from .token_sampler import TokenSampler

DEFAULT_N_CTX = 8192
PREFILL_CHUNK = 64  # tokens per llama_decode in prefill: a reply that arrives waits for at most one chunk


@dataclass
class GenerationStats:
    """What one generation cost. ``reused_tokens`` of the prompt came from the KV cache."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    prompt_seconds: float = 0.0
    first_token_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""
    threads: int = 0  # the decode thread count in use at the end (chosen by measurement unless fixed)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def evaluated_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_second"] = round(self.tokens_per_second, 2)
        return d


@dataclass
class Sampling:
    """Sampling settings; ``temperature=0`` is greedy (tests, benchmarks)."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 512
    seed: int | None = None
    min_tokens: int = 0  # the reply may not end before this many tokens (the chat benchmark's long replies)


class Engine:
    """One loaded GGUF. Generation is serialised (one llama.cpp context); token counting is not."""

    def __init__(self, llama, info: GGUFInfo, *, n_ctx: int, style: Style | None = None,
                 threads: ThreadChooser | None = None, n_threads_batch: int | None = None) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.llama = llama
        self.info = info
        self.path = info.path
        self.n_ctx = n_ctx
        self.style: Style = style or info.style
        self.last_stats = GenerationStats()
        self.prompt_rate: float | None = None  # prompt tokens/s of the last reply that evaluated 32 or more
        self.threads = threads or ThreadChooser([llama.n_threads])
        self._n_threads_batch = n_threads_batch  # None: prompts use the decode count the chooser picked
        self._threads_now = (0, 0)
        self._lock = threading.Lock()  # the llama.cpp context: one reply or one prefill at a time
        self._state = threading.Lock()  # guards _holder
        self._holder = ""  # "reply" or "prefill" while one holds _lock
        self._give_way = threading.Event()  # set by a reply that waits for a prefill
        self._vocab = llama._model.vocab
        self._template_stops: list[str] = []
        self._formatter = None
        if self.style == "chat" and info.chat_template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(info.chat_template, eos_token=self.token_text(llama.token_eos()),
                                                  bos_token=self.token_text(llama.token_bos()))

    @property
    def name(self) -> str:
        return self.info.name

    # -- tokens -------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """The model's own token count of ``text`` (what the persona budgets are measured in)."""
        if not text:
            return 0
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def token_text(self, token: int, special: bool = True) -> str:
        return self.piece(token, special).decode("utf-8", "replace")

    def piece(self, token: int, special: bool) -> bytes:
        """The bytes of one token (llama-cpp-python's helper truncates pieces longer than 32 bytes)."""
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return bytes(buf.raw[:n])

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    # -- prompts ------------------------------------------------------------------------------
    def render(self, conv: Conversation, *, reasoning_effort: harmony.ReasoningEffort = "low") -> str:
        """The exact prompt text for ``conv`` in this model's style, ready for :meth:`stream`."""
        if self.style == "harmony":
            return render_text(conv, "harmony", add_generation_prompt=True, reasoning_effort=reasoning_effort)
        if self.style == "script" or self._formatter is None:
            return render_text(conv, "script", add_generation_prompt=True)
        messages = to_messages(conv)
        try:
            result = self._formatter(messages=messages)
        except Exception:  # noqa: BLE001 - a strict template refuses a chat the character opens (a greeting)
            if opened_by_user(messages) is messages:
                raise
            result = self._formatter(messages=opened_by_user(messages))
        stop = result.stop
        self._template_stops = [stop] if isinstance(stop, str) else list(stop or [])
        return result.prompt

    def stops(self) -> list[str]:
        if self.style == "chat" and self._formatter is not None:
            return list(self._template_stops)
        return stop_strings("script" if self.style == "chat" else self.style)

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """Prompt tokens: template/harmony markers become special tokens; a script is plain text."""
        data = prompt.encode("utf-8")
        if self.style == "harmony":
            return self.llama.tokenize(data, add_bos=True, special=True)
        if self.style == "chat" and self._formatter is not None:
            bos = self.token_text(self.llama.token_bos())
            return self.llama.tokenize(data, add_bos=not (bos and prompt.startswith(bos)), special=True)
        return self.llama.tokenize(data, add_bos=True, special=False)

    # -- threads and the model's lock ---------------------------------------------------------------
    def _use_threads(self, n: int) -> int:
        batch = self._n_threads_batch or n
        if self._threads_now != (n, batch):
            self._lib.llama_set_n_threads(self.llama._ctx.ctx, n, batch)
            self._threads_now = (n, batch)
        return n

    def _take_for_reply(self) -> None:
        """Hold the model for a reply: a prefill gives way (between two chunks); another reply is an error."""
        deadline = time.monotonic() + 120
        while True:
            with self._state:
                if self._lock.acquire(blocking=False):
                    self._holder = "reply"
                    self._give_way.clear()
                    return
                if self._holder != "prefill":
                    raise ModelError("the model is already generating a reply: stop it first")
                self._give_way.set()
            if time.monotonic() > deadline:  # pragma: no cover - a chunk never takes this long
                raise ModelError("the model is busy evaluating a prompt: try again")
            time.sleep(0.002)

    def _release(self) -> None:
        openmp.release_threads()  # the next computation may be in another thread (see core.openmp)
        with self._state:
            self._holder = ""
            self._lock.release()

    def prefill(self, prompt: str, stop: Callable[[], bool] | None = None) -> int:
        """Evaluate ``prompt`` into the KV cache now, so that a reply to a prompt starting with it later only
        evaluates the rest (the chat calls this while the user types). Returns how many tokens it evaluated.

        Never in a reply's way: it does nothing while the model is busy, and stops between two chunks of
        :data:`PREFILL_CHUNK` tokens when a reply starts or ``stop()`` says so; what it evaluated stays cached.
        """
        with self._state:
            if not self._lock.acquire(blocking=False):
                return 0
            self._holder = "prefill"
        evaluated = 0
        try:
            tokens = self.tokenize_prompt(prompt)
            if len(tokens) >= self.n_ctx or self._give_way.is_set():
                return 0
            start = self._reuse_prefix(tokens)
            self._use_threads(self.threads.current)
            for i in range(start, len(tokens), PREFILL_CHUNK):
                if self._give_way.is_set() or (stop is not None and stop()):
                    break
                chunk = tokens[i: i + PREFILL_CHUNK]
                self.llama.eval(chunk)
                evaluated += len(chunk)
        finally:
            self._release()
        return evaluated

    # -- generation ---------------------------------------------------------------------------
    def _cached_prefix(self, tokens: list[int]) -> int:
        """How many leading tokens of ``tokens`` llama.cpp's KV cache holds."""
        import numpy as np  # after llama.cpp's libraries (see the import at the top)

        llama = self.llama
        cached = llama.input_ids[: min(llama.n_tokens, len(tokens))]
        differs = np.flatnonzero(cached != np.asarray(tokens[: len(cached)], dtype=cached.dtype))
        return int(differs[0]) if len(differs) else len(cached)

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Keep the longest cached prefix of ``tokens`` in the KV cache (at least one token is re-evaluated
        so there are fresh logits); returns how many prompt tokens are reused."""
        llama = self.llama
        common = min(self._cached_prefix(tokens), len(tokens) - 1)
        if common > 0 and llama._ctx.kv_cache_seq_rm(-1, common, -1):
            llama.n_tokens = common
            return common
        llama.reset()
        return 0

    def uncached_tokens(self, prompt: str) -> int:
        """How many tokens of ``prompt`` a reply would evaluate now (those after the prefix llama.cpp holds)."""
        tokens = self.tokenize_prompt(prompt)
        return len(tokens) - self._cached_prefix(tokens)

    def stream(self, prompt: str, sampling: Sampling | None = None, *, cancel: threading.Event | None = None,
               on_token: Callable[[int], None] | None = None) -> Iterator[Delta]:
        """Generate a reply to ``prompt`` (from :meth:`render`), yielding deltas as text arrives.

        Stops at the style's end, ``sampling.max_tokens``, an end-of-generation token or ``cancel``;
        :attr:`last_stats` says which and how fast.
        """
        s = sampling or Sampling()
        self._take_for_reply()
        try:
            yield from self._stream(prompt, s, cancel, on_token)
        finally:
            self._release()

    def _stream(self, prompt: str, s: Sampling, cancel: threading.Event | None,
                on_token: Callable[[int], None] | None) -> Iterator[Delta]:
        started = time.perf_counter()
        stats = self.last_stats = GenerationStats()
        tokens = self.tokenize_prompt(prompt)
        stats.prompt_tokens = len(tokens)
        room = self.n_ctx - len(tokens)
        if room < 8:
            raise ModelError(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}: start a new chat or "
                "open the model with a longer context"
            )
        max_tokens = min(s.max_tokens, room)
        special = self.style == "harmony"
        reply = ReplyStream(self.style, self.stops())
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        llama = self.llama
        stats.reused_tokens = self._reuse_prefix(tokens)
        if s.seed is not None:
            llama.set_seed(s.seed)
        threads = self._use_threads(self.threads.current)
        stops = [x for x in self.stops() if x]

        def ends(token: int) -> bool:
            text = self.token_text(token, special)
            return self.is_end_of_generation(token) or any(stop in text for stop in stops)

        sampler = TokenSampler(llama, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                               repeat_penalty=s.repeat_penalty, seed=llama._seed, min_tokens=s.min_tokens, ends=ends)
        first_at = last_at = 0.0
        stats.stop_reason = "length"
        try:
            llama.eval(tokens[stats.reused_tokens:])
            for n in itertools.count(1):
                token = sampler.sample()
                stats.generated_tokens = n
                if cancel is not None and cancel.is_set():  # checked first: a stop during the prompt wins
                    stats.stop_reason = "cancelled"
                    break
                now = time.perf_counter()
                if n == 1:
                    stats.prompt_seconds = now - started
                    first_at = now
                    if stats.evaluated_tokens >= 32:
                        self.prompt_rate = stats.evaluated_tokens / stats.prompt_seconds
                else:  # one decode step, with whatever it waited on (the GIL, a core, the consumer)
                    self.threads.record(threads, now - last_at)
                last_at = now
                if on_token is not None:
                    on_token(token)
                eog = self.is_end_of_generation(token)
                if eog and not (special and self.token_text(token) == harmony.END):
                    if special:
                        yield from reply.feed(self.token_text(token))
                    stats.stop_reason = "end"
                    break
                text = decoder.decode(self.piece(token, special))
                deltas = reply.feed(text)
                if deltas and not stats.first_token_seconds:
                    stats.first_token_seconds = time.perf_counter() - started
                yield from deltas
                if reply.finished:
                    stats.stop_reason = "stop"
                    break
                if n >= max_tokens:
                    break
                threads = self._use_threads(self.threads.pick())  # for the next decode step
                llama.eval([token])
        finally:
            sampler.close()
            stats.threads = self.threads.current
            if first_at:
                stats.decode_seconds = time.perf_counter() - first_at
        tail = decoder.decode(b"", final=True)
        yield from reply.feed(tail) if tail else ()
        yield from reply.close()

    def generate_text(self, prompt: str, sampling: Sampling | None = None) -> tuple[str, str]:
        """A whole reply at once: ``(speech, analysis)``."""
        final, analysis = [], []
        for d in self.stream(prompt, sampling):
            (final if d.channel == "final" else analysis).append(d.text)
        return "".join(final).strip(), "".join(analysis).strip()

    def close(self) -> None:
        close = getattr(self.llama, "close", None)
        if close is not None:
            close()


_quiet_callback = None


def quiet_llama_logs() -> None:
    """Send llama.cpp's own log lines (some are printed whatever ``verbose`` says) to Python logging,
    so they never land on a full-screen app's terminal."""
    global _quiet_callback
    if _quiet_callback is not None:
        return
    import logging

    import llama_cpp

    log = logging.getLogger("haruhi_tui.llama_cpp")

    @llama_cpp.llama_log_callback
    def _callback(level: int, text: bytes, user_data) -> None:
        log.log(logging.ERROR if level == 4 else logging.DEBUG, text.decode("utf-8", "replace").rstrip())

    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    _quiet_callback = _callback


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def open_gguf(path: str | Path, *, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None,
              n_threads_batch: int | None = None, n_batch: int = 512,
              n_gpu_layers: int = -1, style: Style | None = None, flash_attn: bool | None = None,
              verbose: bool = False) -> Engine:
    """Load a GGUF for chat or evaluation.

    Raises :class:`ModelError` with a one-line reason for a missing file, a file that is not a GGUF or
    is damaged, and a model that does not fit in memory. ``n_ctx`` is capped at the model's trained
    context. ``style`` overrides :func:`detect_model_style` (e.g. to treat a chat model as a script).
    Without ``n_threads`` the thread count is measured while decoding (:mod:`~haruhi_tui.core.decode_threads`);
    with it, that count is used throughout (and for prompts unless ``n_threads_batch`` says otherwise).
    Attention is llama.cpp's flash attention unless ``flash_attn`` says otherwise (llama-cpp-python turns it
    off unless asked): on the 2-core machine with Gemma 3 270M it decoded 4 % faster after a short prompt, 7 %
    after a chat turn's 1,100 tokens, and evaluated prompts 11 % faster; gpt-oss-20b on llama.cpp CUDA (one
    H200) streamed 287-298 tokens/s against 274-276 without it, and its cold first token took 25-45 % less time.
    """
    info = read_gguf_info(path)
    if info.context_length:
        n_ctx = min(n_ctx, info.context_length)
    check_fits(info, n_ctx)
    try:
        from llama_cpp import Llama
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ModelError(f"llama-cpp-python is not installed or failed to load ({exc}): pip install -e .") from exc
    if not verbose:
        quiet_llama_logs()
    try:
        counts = (n_threads,) if n_threads else candidate_counts(default_threads())
        llama = Llama(
            model_path=str(info.path), n_ctx=n_ctx, n_threads=counts[0],
            n_threads_batch=n_threads_batch or counts[0], n_batch=n_batch,
            n_gpu_layers=n_gpu_layers, flash_attn=flash_attn is not False, verbose=verbose,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        text = str(exc)
        if "context" in text.lower():
            raise ModelError(
                f"llama.cpp could not make a {n_ctx}-token context for {info.path.name} (out of memory?): "
                "try a shorter context"
            ) from None
        raise ModelError(
            f"llama.cpp could not load {info.path.name} (damaged, incomplete, or an architecture this llama.cpp "
            f"does not know: {info.architecture or 'unknown'}): convert or download it again"
        ) from None
    return Engine(llama, info, n_ctx=n_ctx, style=style, threads=ThreadChooser(counts),
                  n_threads_batch=n_threads_batch)
