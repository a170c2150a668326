"""From ShareGPT samples to training batches: prompts, label masks, packing. Shared by every engine.

A sample's messages become a :class:`~haruhi_tui.core.prompt_format.Conversation`, rendered in the model's style
(:func:`~haruhi_tui.core.prompt_format.detect_style`) into segments that say which text carries the loss: the
character's speech and the token that ends it, never the prompt. Segments are tokenized one by one, so a
label boundary is always a token boundary and the prompt is tokenized as it is at inference (the prompt
alone, then the reply). Models with a chat template we do not control (``chat`` style, or a gpt-oss
checkpoint's own template) are rendered with it, and the assistant spans are found by rendering prefixes.

Which sequences share a batch, and which process trains it when, is planned in :mod:`trainer.batch_plan`;
:func:`collate` turns one planned batch into tensors: ``packed`` rows hold several samples whose position ids
restart at 0, which transformers turns into an attention mask that never crosses a sample boundary (eager,
sdpa and flex attention alike); ``grouped`` rows hold one sample each, for attention kernels that ignore such
masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from haruhi_tui.core import prompt_format
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.harmony import Segment
from haruhi_tui.core.persona import Turn
from haruhi_tui.core.prompt_format import Conversation, Style
from haruhi_tui.core.sharegpt import Sample

IGNORE_INDEX = -100
PAD_MULTIPLE = 8
DEFAULT_CHARACTER = "assistant"
#: Samples tokenized per tokenizer call (their segments are spread over the CPU cores).
ENCODE_CHUNK = 512


@dataclass
class Encoded:
    """One training sequence: token ids and labels (``IGNORE_INDEX`` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trainable(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def truncated(self, length: int) -> "Encoded":
        return Encoded(self.input_ids[:length], self.labels[:length])


# -- rendering --------------------------------------------------------------------------------------

def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptRenderer:
    """Renders conversations as trainable/non-trainable segments in one model's style.

    ``harmony`` (gpt-oss) uses the checkpoint's own chat template when ``use_template`` (the persona
    goes in as the system message, which gpt-oss templates make the developer message), else our
    renderer; ``chat`` always uses the model's template; ``script`` is our play-script rendering.
    """

    def __init__(self, tokenizer: Any, style: Style, *, use_template: bool, reasoning_effort: str = "low") -> None:
        self.tokenizer = tokenizer
        self.style = style
        self.use_template = style == "chat" or (style == "harmony" and use_template)
        if self.use_template and not getattr(tokenizer, "chat_template", None):
            raise HaruhiError("the model has no chat template to render its prompts with")
        self.reasoning_effort = reasoning_effort
        specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
        for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
            if getattr(token, "special", False):
                specials.add(str(token.content))
        self._specials = sorted((s for s in specials if s), key=len, reverse=True)
        bos = getattr(tokenizer, "bos_token", None)
        # harmony conversations begin with <|start|>; neither gpt-oss nor llama.cpp puts a BOS before it.
        self.bos_id = tokenizer.bos_token_id if (bos and style != "harmony") else None
        self.bos_token = bos

    def segments(self, conv: Conversation) -> list[Segment]:
        if self.use_template:
            return self._template_segments(conv)
        return prompt_format.render_segments(conv, self.style, add_generation_prompt=False,
                                             reasoning_effort=self.reasoning_effort)  # type: ignore[arg-type]

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  reasoning_effort=self.reasoning_effort)

    def _special_at(self, text: str, pos: int) -> int:
        for special in self._specials:
            if text.startswith(special, pos):
                return len(special)
        return 0

    def _template_segments(self, conv: Conversation) -> list[Segment]:
        """Spans of each assistant message found by rendering the conversation up to it: the reply
        starts after the generation prompt; its content and the special token right after it train."""
        messages = prompt_format.to_messages(conv)
        full = self._render(messages, add_generation_prompt=False)
        spans: list[tuple[int, int]] = []
        cursor = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self._render(messages[:i], add_generation_prompt=True)
            start = full.find(message["content"], max(cursor, _common_prefix_len(full, prefix)))
            if start < 0:
                raise HaruhiError("the model's chat template changes the assistant text, so its loss mask cannot be "
                                  "built; train with --template haruhi")
            end = start + len(message["content"])
            end += self._special_at(full, end)
            spans.append((start, end))
            cursor = end
        segments: list[Segment] = []
        last = 0
        for start, end in spans:
            if start > last:
                segments.append(Segment(full[last:start]))
            segments.append(Segment(full[start:end], trainable=True))
            last = end
        if last < len(full):
            segments.append(Segment(full[last:]))
        return segments

    def encode(self, conv: Conversation) -> Encoded:
        return self.encode_many([conv])[0]

    def encode_many(self, convs: Sequence[Conversation]) -> list[Encoded]:
        """Tokenize segment by segment (adjacent segments with the same flag merged first), every
        conversation's segments in one tokenizer call: the fast tokenizer spreads them over the CPU cores."""
        merged_all: list[list[Segment]] = []
        for conv in convs:
            merged: list[Segment] = []
            for seg in self.segments(conv):
                if not seg.text:
                    continue
                if merged and merged[-1].trainable == seg.trainable:
                    merged[-1] = Segment(merged[-1].text + seg.text, seg.trainable)
                else:
                    merged.append(seg)
            merged_all.append(merged)
        texts = [seg.text for merged in merged_all for seg in merged]
        pieces = iter(self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        out = []
        for merged in merged_all:
            ids: list[int] = []
            labels: list[int] = []
            if self.bos_id is not None and not (merged and merged[0].text.startswith(self.bos_token)):
                ids.append(self.bos_id)
                labels.append(IGNORE_INDEX)
            for seg in merged:
                piece = next(pieces)
                ids.extend(piece)
                labels.extend(piece if seg.trainable else [IGNORE_INDEX] * len(piece))
            out.append(Encoded(ids, labels))
        return out


# -- samples -> sequences ---------------------------------------------------------------------------

@dataclass
class DataStats:
    """What became of the dataset: shown at the start of a run and written to events.jsonl."""

    samples: int = 0
    sequences: int = 0
    split_samples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    trainable_tokens: int = 0
    longest: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def conversation_of(sample: Sample) -> Conversation:
    return prompt_format.conversation_from_messages(sample.messages, sample.character or DEFAULT_CHARACTER)


def _with_turns(conv: Conversation, turns: Sequence[Turn]) -> Conversation:
    return Conversation(conv.system, tuple(turns), conv.character)


def fit_conversation(renderer: PromptRenderer, conv: Conversation, max_length: int, stats: DataStats,
                     encoded: Encoded | None = None) -> list[Encoded]:
    """The conversation as sequences of at most ``max_length`` tokens (``encoded``: the whole conversation,
    when already tokenized). A long one is split between user/assistant pairs (each window keeps the persona;
    every reply is trained once); a single pair that is still too long loses the start of its user turn, then
    is cut at ``max_length`` (and dropped if no trainable token is left)."""
    encoded = encoded or renderer.encode(conv)
    if len(encoded) <= max_length:
        return [encoded]
    pairs = [conv.turns[i:i + 2] for i in range(0, len(conv.turns), 2)]
    if len(pairs) == 1:
        cut = _shorten_prompt(renderer, conv, encoded, max_length)
        if cut.trainable:
            stats.truncated += 1
            return [cut]
        stats.dropped += 1
        return []
    out: list[Encoded] = []
    window: list[Turn] = []
    for pair in pairs:
        candidate = window + list(pair)
        if window and len(renderer.encode(_with_turns(conv, candidate))) > max_length:
            out.extend(fit_conversation(renderer, _with_turns(conv, window), max_length, stats))
            window = list(pair)
        else:
            window = candidate
    out.extend(fit_conversation(renderer, _with_turns(conv, window), max_length, stats))
    return out


def _shorten_prompt(renderer: PromptRenderer, conv: Conversation, encoded: Encoded, max_length: int) -> Encoded:
    """A single exchange that is too long: drop the start of the user turn (the oldest context) until it
    fits, then, if the persona alone is still too long, cut the sequence at ``max_length``."""
    user = conv.turns[0]
    text = user.text
    while len(encoded) > max_length and user.role == "user" and text:
        over = len(encoded) - max_length
        tokens = max(1, len(renderer.tokenizer(text, add_special_tokens=False)["input_ids"]))
        drop = max(1, int(over * len(text) / tokens * 1.1) + 1)
        text = text[drop:]
        encoded = renderer.encode(_with_turns(conv, [Turn(user.role, text, user.speaker), *conv.turns[1:]]))
    return encoded.truncated(max_length)


def encode_samples(samples: Sequence[Sample], renderer: PromptRenderer, max_length: int,
                   progress: Callable[[int], None] | None = None) -> tuple[list[Encoded], DataStats]:
    stats = DataStats(samples=len(samples))
    sequences: list[Encoded] = []
    for start in range(0, len(samples), ENCODE_CHUNK):
        convs = [conversation_of(sample) for sample in samples[start:start + ENCODE_CHUNK]]
        for conv, encoded in zip(convs, renderer.encode_many(convs)):
            pieces = fit_conversation(renderer, conv, max_length, stats, encoded)
            if len(pieces) > 1:
                stats.split_samples += 1
            sequences.extend(p for p in pieces if p.trainable)
        if progress:
            progress(min(start + ENCODE_CHUNK, len(samples)))
    if not sequences:
        raise HaruhiError("no training sequence left: every sample was dropped (no assistant text fits in "
                          f"--max-length {max_length}); raise --max-length")
    stats.sequences = len(sequences)
    stats.tokens = sum(len(s) for s in sequences)
    stats.trainable_tokens = sum(s.trainable for s in sequences)
    stats.longest = max(len(s) for s in sequences)
    return sequences, stats


# -- collation --------------------------------------------------------------------------------------

def padded_length(length: int) -> int:
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


def collate(rows: Sequence[Sequence[int]], sequences: Sequence[Encoded], mode: str, pad_id: int, *,
            width: int | None = None, labelled: bool = True) -> dict[str, Any]:
    """Tensors for one batch, ``width`` tokens wide (default: the longest row, padded to a multiple of 8).
    Packed rows carry ``position_ids`` that restart at every sequence (and at the padding) and no attention
    mask, which is how transformers recognises packed sequences; grouped rows carry a padding
    ``attention_mask``. The first token of every sequence is never a label, so no sequence learns to predict
    the next one; with ``labelled=False`` no token is (a batch that only keeps a process in step).
    ``haruhi_tokens`` = (tokens in the batch, real, trainable), plain ints: counting them never waits for
    the GPU."""
    import torch

    longest = max(sum(len(sequences[i]) for i in row) for row in rows)
    width = width or padded_length(longest)
    if width < longest:
        raise ValueError(f"a row of {longest} tokens does not fit a batch {width} tokens wide")
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    real = trainable = 0
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            seq = sequences[i]
            n = len(seq)
            input_ids[r, at:at + n] = torch.tensor(seq.input_ids, dtype=torch.long)
            seq_labels = torch.tensor(seq.labels, dtype=torch.long)
            seq_labels[0] = IGNORE_INDEX
            if not labelled:
                seq_labels[:] = IGNORE_INDEX
            labels[r, at:at + n] = seq_labels
            position_ids[r, at:at + n] = torch.arange(n)
            attention_mask[r, at:at + n] = 1
            trainable += int((seq_labels != IGNORE_INDEX).sum())
            at += n
        real += at
        if at < width:
            position_ids[r, at:] = torch.arange(width - at)
    batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels}
    if mode == "packed":
        batch["position_ids"] = position_ids
    else:
        batch["attention_mask"] = attention_mask
    batch["haruhi_tokens"] = (len(rows) * width, real if labelled else 0, trainable)
    return batch
