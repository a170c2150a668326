"""The llama.cpp engine: open a GGUF with friendly errors, render prompts in the model's style, stream replies.

Streaming is our own token loop over ``Llama.generate`` rather than ``create_completion``, because:

* gpt-oss output must be detokenized *with* special tokens so :class:`~haruhi_tui.core.harmony.HarmonyStreamParser`
  sees ``<|channel|>`` and can keep the analysis channel apart from what the character says;
* the loop knows exactly how many prompt tokens came from the KV cache (the persona prefix is stable
  across turns, so a follow-up turn only evaluates the new tail), which the app shows and tests check;
* a stop request (a ``threading.Event``) is honoured between two tokens.

:func:`open_gguf` and :func:`detect_model_style` are the public entry points the evaluator uses too.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

try:  # llama.cpp's libraries before numpy's (prompt_format below pulls numpy in): with numpy loaded first, a
    # CUDA build of llama-cpp-python crashed while loading a model on the H100 test machine
    # (benchmarks/results/full-size/README.md)
    import llama_cpp as _llama_cpp  # noqa: F401
except Exception:  # not installed or broken: open_gguf says so when a model is opened
    pass

from . import harmony
from .errors import HaruhiError
from .harmony import Delta
from .prompt_format import Conversation, Style, detect_style, render_text, stop_strings, to_messages

DEFAULT_N_CTX = 8192


class ModelError(HaruhiError):
    """A model cannot be used (missing, not a GGUF, damaged, too big); the message says what to do."""


# -- reading a GGUF header without loading the model ------------------------------------------

@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF says about itself, read from its header (fast: tensors are not touched)."""

    path: Path
    size_bytes: int
    architecture: str
    name: str
    chat_template: str | None
    context_length: int
    block_count: int
    head_count_kv: int
    key_length: int
    value_length: int

    @property
    def style(self) -> Style:
        return detect_style(self.architecture, self.chat_template)

    def kv_cache_bytes(self, n_ctx: int) -> int:
        """f16 K and V for every layer at ``n_ctx`` (an upper bound: sliding-window layers need less)."""
        return n_ctx * self.block_count * self.head_count_kv * (self.key_length + self.value_length) * 2


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Check a GGUF and read what the engine needs from its header; :class:`ModelError` says what is wrong
    (missing, not a GGUF, cut short, split parts missing) and what to do."""
    from haruhi_tui.services import models

    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model file not found: {p} (pick another model, or pass --model with a .gguf file)")
    if p.is_dir():
        raise ModelError(f"{p} is a folder: pass the .gguf file inside it")
    local = models.read_local_model(p)
    if local.broken:
        raise ModelError(f"{p.name} cannot be used: {local.broken}")
    meta = models._Header(p).metadata
    arch = local.architecture

    def num(suffix: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{suffix}")
        return int(value) if isinstance(value, (int, float)) else default

    heads = num("attention.head_count", 1) or 1
    head_dim = num("embedding_length") // heads if num("embedding_length") else 128
    template = meta.get("tokenizer.chat_template")
    return GGUFInfo(
        path=p,
        size_bytes=local.size_bytes,
        architecture=arch,
        name=local.name,
        chat_template=template if isinstance(template, str) and template.strip() else None,
        context_length=local.context_length,
        block_count=num("block_count"),
        head_count_kv=num("attention.head_count_kv", heads) or heads,
        key_length=num("attention.key_length", head_dim),
        value_length=num("attention.value_length", head_dim),
    )


def detect_model_style(path: str | Path) -> Style:
    """The prompt style of a GGUF (harmony / chat / script) from its architecture and chat template."""
    return read_gguf_info(path).style


def _memory_bytes() -> tuple[int, int]:
    """(total, available) memory in bytes, from /proc/meminfo (0, 0 where unknown)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_fits(info: GGUFInfo, n_ctx: int) -> None:
    """Refuse a model that cannot fit in this machine's memory (weights + KV cache), with what to do."""
    total, _ = _memory_bytes()
    need = info.size_bytes + info.kv_cache_bytes(n_ctx)
    if total and need > total:
        raise ModelError(
            f"{info.path.name} needs about {_gib(need)} of memory (weights {_gib(info.size_bytes)} + context "
            f"{n_ctx} tokens) but this machine has {_gib(total)}: pick a smaller quantization or a shorter context"
        )


# -- streaming --------------------------------------------------------------------------------

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


def _held_back(buffer: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``buffer`` could be the start of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(buffer)), best, -1):
            if buffer.endswith(stop[:n]):
                best = n
                break
    return best


class ReplyStream:
    """Turns detokenized text, in any chunking, into channel deltas for one reply.

    harmony: the :class:`~haruhi_tui.core.harmony.HarmonyStreamParser` splits analysis from final speech, and
    the reply ends at ``<|return|>``/``<|call|>`` or when the final message is closed. Other styles: all
    text is speech, and the reply ends at the style's stop strings (the ``」`` of the play script),
    which are held back until it is clear they are not one.
    """

    def __init__(self, style: Style, stops: Sequence[str] = ()) -> None:
        self.style = style
        self.stops = [s for s in stops if s] if style != "harmony" else []
        self.parser = harmony.HarmonyStreamParser() if style == "harmony" else None
        self.finished = False
        self._pending = ""
        self._raw = ""
        self.final = ""
        self.analysis = ""

    def _record(self, deltas: list[Delta]) -> list[Delta]:
        for d in deltas:
            if d.channel == "final":
                self.final += d.text
            else:
                self.analysis += d.text
        return deltas

    def feed(self, text: str) -> list[Delta]:
        if self.finished or not text:
            return []
        if self.parser is not None:
            start = len(self._raw)
            self._raw += text
            end = self._final_end()
            if end != -1:  # the character has spoken: nothing after the final message's end marker counts
                text, self.finished = text[: max(0, end - start)], True
            deltas = self.parser.feed(text) if text else []
            if self.finished:
                deltas += self.parser.close()
            elif self.parser.finished:
                self.finished = True
            return self._record(deltas)
        self._pending += text
        hits = [(self._pending.find(s), s) for s in self.stops]
        hits = [(i, s) for i, s in hits if i != -1]
        if hits:
            i = min(hits)[0]
            out, self._pending, self.finished = self._pending[:i], "", True
        else:
            keep = _held_back(self._pending, self.stops)
            out = self._pending[: len(self._pending) - keep]
            self._pending = self._pending[len(self._pending) - keep:]
        return self._record([Delta("final", out)] if out else [])

    def _final_end(self) -> int:
        """Where the first final message's end marker (``<|end|>``, ``<|return|>``, a new ``<|start|>``)
        ends in the raw text, or -1: the parser is fed up to and including it, so nothing is held back."""
        header = self._raw.find(harmony.CHANNEL + "final")
        body = self._raw.find(harmony.MESSAGE, header) if header != -1 else -1
        if body == -1:
            return -1
        ends = [(i, m) for i, m in ((self._raw.find(m, body), m) for m in (harmony.END, harmony.START, harmony.RETURN, harmony.CALL)) if i != -1]
        if not ends:
            return -1
        i, marker = min(ends)
        return i + len(marker)

    def close(self) -> list[Delta]:
        """Flush what is held back (the stream ended without a stop string)."""
        if self.parser is not None:
            return self._record(self.parser.close()) if not self.parser.finished else []
        out, self._pending = self._pending, ""
        if self.finished or not out:
            return []
        return self._record([Delta("final", out)])


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


class Engine:
    """One loaded GGUF. Generation is serialised (one llama.cpp context); token counting is not."""

    def __init__(self, llama, info: GGUFInfo, *, n_ctx: int, style: Style | None = None) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.llama = llama
        self.info = info
        self.path = info.path
        self.n_ctx = n_ctx
        self.style: Style = style or info.style
        self.last_stats = GenerationStats()
        self._lock = threading.Lock()
        self._vocab = llama._model.vocab
        self._template_stops: list[str] = []
        self._formatter = None
        if self.style == "chat" and info.chat_template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(
                info.chat_template, eos_token=self.token_text(llama.token_eos()), bos_token=self.token_text(llama.token_bos())
            )

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
        result = self._formatter(messages=to_messages(conv))
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

    # -- generation ---------------------------------------------------------------------------
    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Keep the longest cached prefix of ``tokens`` in the KV cache (at least one token is re-evaluated
        so there are fresh logits); returns how many prompt tokens are reused."""
        llama = self.llama
        cached = llama.input_ids[: llama.n_tokens].tolist()
        common = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)
        if common > 0 and llama._ctx.kv_cache_seq_rm(-1, common, -1):
            llama.n_tokens = common
            return common
        llama.reset()
        return 0

    def stream(self, prompt: str, sampling: Sampling | None = None, *, cancel: threading.Event | None = None,
               on_token: Callable[[int], None] | None = None) -> Iterator[Delta]:
        """Generate a reply to ``prompt`` (from :meth:`render`), yielding deltas as text arrives.

        Stops at the style's end, ``sampling.max_tokens``, an end-of-generation token or ``cancel``;
        :attr:`last_stats` says which and how fast.
        """
        s = sampling or Sampling()
        if not self._lock.acquire(blocking=False):
            raise ModelError("the model is already generating a reply: stop it first")
        try:
            yield from self._stream(prompt, s, cancel, on_token)
        finally:
            self._lock.release()

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
        stats.reused_tokens = self._reuse_prefix(tokens)
        if s.seed is not None:
            self.llama.set_seed(s.seed)
        generator = self.llama.generate(
            tokens, temp=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
            repeat_penalty=s.repeat_penalty, reset=True,
        )
        first_at = 0.0
        stats.stop_reason = "length"
        try:
            for n, token in enumerate(generator, start=1):
                stats.generated_tokens = n
                if cancel is not None and cancel.is_set():  # checked first: a stop during the prompt wins
                    stats.stop_reason = "cancelled"
                    break
                now = time.perf_counter()
                if n == 1:
                    stats.prompt_seconds = now - started
                    first_at = now
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
            else:
                stats.stop_reason = "end"
        finally:
            generator.close()
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


def interactive_threads() -> int:
    """Decode threads for an interactive app: leave one core to the UI on small machines.

    llama.cpp's decode threads meet at a barrier for every layer; when the UI thread takes one of only
    two cores, the other decode thread waits at each barrier and generation slows far more than the
    lost core would explain. Prompt evaluation (batches) still uses every core.
    """
    cores = default_threads()
    return cores - 1 if 2 <= cores <= 4 else cores


def open_gguf(path: str | Path, *, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None,
              n_threads_batch: int | None = None, n_batch: int = 512,
              n_gpu_layers: int = -1, style: Style | None = None, verbose: bool = False) -> Engine:
    """Load a GGUF for chat or evaluation.

    Raises :class:`ModelError` with a one-line reason for a missing file, a file that is not a GGUF or
    is damaged, and a model that does not fit in memory. ``n_ctx`` is capped at the model's trained
    context. ``style`` overrides :func:`detect_model_style` (e.g. to treat a chat model as a script).
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
        llama = Llama(
            model_path=str(info.path), n_ctx=n_ctx, n_threads=n_threads or default_threads(),
            n_threads_batch=n_threads_batch or default_threads(), n_batch=n_batch,
            n_gpu_layers=n_gpu_layers, verbose=verbose,
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
    return Engine(llama, info, n_ctx=n_ctx, style=style)


# -- where models come from -------------------------------------------------------------------

def bundled_model(progress: Callable[[float | None, str], None] | None = None) -> Path:
    """The offline default model's GGUF, assembled on first use (progress is reported while it is)."""
    from haruhi_tui.services.models import default_gguf

    return Path(default_gguf(progress))


def find_models(dirs: Iterable[str | Path], paths: Sequence[str | Path] = ()):
    """GGUF models in ``dirs`` and ``paths`` as :class:`~haruhi_tui.services.models.LocalModel` (broken ones say why)."""
    from haruhi_tui.services.models import list_local_models

    return list_local_models(list(dirs), paths)
