"""From ShareGPT samples to training batches: prompts, label masks, packing. Shared by every engine.

A sample's messages become a :class:`~haruhi_tui.core.prompt_format.Conversation`, rendered in the model's style
(:func:`~haruhi_tui.core.prompt_format.detect_style`) into segments that say which text carries the loss: the
character's speech and the token that ends it, never the prompt. Segments are tokenized one by one, so a
label boundary is always a token boundary and the prompt is tokenized as it is at inference (the prompt
alone, then the reply). Models with a chat template we do not control (``chat`` style, or a gpt-oss
checkpoint's own template) are rendered with it, and the assistant spans are found by rendering prefixes.

Batches are planned once per run (deterministic for the seed): ``packed`` fills rows of ``max_length``
tokens with several samples whose position ids restart at 0, which transformers turns into an attention
mask that never crosses a sample boundary (eager, sdpa and flex attention alike); ``grouped`` puts one
sample per row and batches samples of similar length, for attention kernels that ignore such masks.
Either way little compute is spent on padding; the plan reports the real-token share.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
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
        """Tokenize segment by segment (adjacent segments with the same flag merged first)."""
        merged: list[Segment] = []
        for seg in self.segments(conv):
            if not seg.text:
                continue
            if merged and merged[-1].trainable == seg.trainable:
                merged[-1] = Segment(merged[-1].text + seg.text, seg.trainable)
            else:
                merged.append(seg)
        ids: list[int] = []
        labels: list[int] = []
        if self.bos_id is not None and not (merged and merged[0].text.startswith(self.bos_token)):
            ids.append(self.bos_id)
            labels.append(IGNORE_INDEX)
        pieces = self.tokenizer([s.text for s in merged], add_special_tokens=False)["input_ids"] if merged else []
        for seg, piece in zip(merged, pieces):
            ids.extend(piece)
            labels.extend(piece if seg.trainable else [IGNORE_INDEX] * len(piece))
        return Encoded(ids, labels)


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


def fit_conversation(renderer: PromptRenderer, conv: Conversation, max_length: int, stats: DataStats) -> list[Encoded]:
    """The conversation as sequences of at most ``max_length`` tokens. A long one is split between
    user/assistant pairs (each window keeps the persona; every reply is trained once); a single pair
    that is still too long loses the start of its user turn, then is cut at ``max_length`` (and dropped
    if no trainable token is left)."""
    encoded = renderer.encode(conv)
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
    for n, sample in enumerate(samples, 1):
        pieces = fit_conversation(renderer, conversation_of(sample), max_length, stats)
        if len(pieces) > 1:
            stats.split_samples += 1
        sequences.extend(p for p in pieces if p.trainable)
        if progress and n % 256 == 0:
            progress(n)
    if not sequences:
        raise HaruhiError("no training sequence left: every sample was dropped (no assistant text fits in "
                          f"--max-length {max_length}); raise --max-length")
    stats.sequences = len(sequences)
    stats.tokens = sum(len(s) for s in sequences)
    stats.trainable_tokens = sum(s.trainable for s in sequences)
    stats.longest = max(len(s) for s in sequences)
    return sequences, stats


# -- batch plans ------------------------------------------------------------------------------------

def padded_length(length: int) -> int:
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


@dataclass
class BatchPlan:
    """Batches of rows of sequence indices. ``packed`` rows hold several sequences; ``grouped`` one each."""

    mode: str
    batches: list[list[list[int]]]
    lengths: list[int] = field(repr=False)

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths[i] for batch in self.batches for row in batch for i in row)

    @property
    def padded_tokens(self) -> int:
        return sum(len(batch) * padded_length(max(sum(self.lengths[i] for i in row) for row in batch))
                   for batch in self.batches)

    @property
    def real_token_share(self) -> float:
        padded = self.padded_tokens
        return self.real_tokens / padded if padded else 0.0

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.batches)

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "batches": len(self.batches), "rows": self.rows,
                "real_tokens": self.real_tokens, "padded_tokens": self.padded_tokens,
                "real_token_share": round(self.real_token_share, 4)}


def _length_order(lengths: Sequence[int], rng: random.Random) -> list[int]:
    order = list(range(len(lengths)))
    rng.shuffle(order)  # ties in length fall in a seeded random order
    order.sort(key=lambda i: -lengths[i])
    return order


def plan_packed(lengths: Sequence[int], batch_size: int, max_length: int, seed: int) -> BatchPlan:
    """Best-fit decreasing into rows of ``max_length`` tokens; rows of similar fill share a batch."""
    rng = random.Random(seed)
    rows: list[list[int]] = []
    fill: list[int] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in _length_order(lengths, rng):
        need = lengths[i]
        k = bisect.bisect_left(free, (need, -1))
        if k < len(free):
            room, row = free.pop(k)
        else:
            rows.append([])
            fill.append(0)
            room, row = max_length, len(rows) - 1
        rows[row].append(i)
        fill[row] += need
        if room - need > 0:
            bisect.insort(free, (room - need, row))
    by_fill = sorted(range(len(rows)), key=lambda r: -fill[r])
    batches = [[rows[r] for r in by_fill[k:k + batch_size]] for k in range(0, len(by_fill), batch_size)]
    rng.shuffle(batches)
    return BatchPlan("packed", batches, list(lengths))


def plan_grouped(lengths: Sequence[int], batch_size: int, max_length: int, seed: int) -> BatchPlan:
    """One sequence per row, ``batch_size`` rows of similar length per batch. A fixed row count keeps
    the batch dimension constant for kernels compiled per shape (Unsloth); only the width varies."""
    rng = random.Random(seed)
    order = _length_order(lengths, rng)
    batches = [[[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return BatchPlan("grouped", batches, list(lengths))


def plan_batches(sequences: Sequence[Encoded], mode: str, batch_size: int, max_length: int, seed: int) -> BatchPlan:
    lengths = [len(s) for s in sequences]
    if mode == "packed":
        return plan_packed(lengths, batch_size, max_length, seed)
    if mode == "grouped":
        return plan_grouped(lengths, batch_size, max_length, seed)
    raise ValueError(f"unknown packing mode {mode!r}")


# -- collation --------------------------------------------------------------------------------------

def collate(rows: Sequence[Sequence[int]], sequences: Sequence[Encoded], mode: str, pad_id: int) -> dict[str, Any]:
    """Tensors for one batch. Packed rows carry ``position_ids`` that restart at every sequence (and at
    the padding) and no attention mask, which is how transformers recognises packed sequences; grouped
    rows carry a padding ``attention_mask``. The first token of every sequence is never a label, so no
    sequence learns to predict the next one. ``haruhi_tokens`` = (tokens in the batch, real, trainable)."""
    import torch

    width = padded_length(max(sum(len(sequences[i]) for i in row) for row in rows))
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
    batch["haruhi_tokens"] = torch.tensor([len(rows) * width, real, trainable], dtype=torch.long)
    return batch


class PlannedBatches:
    """A map-style dataset whose items are whole planned batches (the DataLoader's batch size is 1);
    the Trainer shuffles their order every epoch and shards them across processes."""

    def __init__(self, sequences: Sequence[Encoded], plan: BatchPlan, pad_id: int) -> None:
        self.sequences = sequences
        self.plan = plan
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.plan.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return collate(self.plan.batches[index], self.sequences, self.plan.mode, self.pad_id)


def unwrap_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The DataLoader collate function: each item already is a batch."""
    return items[0]
