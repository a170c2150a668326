"""The gpt-oss harmony format, rendered and parsed in one place.

A harmony conversation is a run of messages ``<|start|>{role}[<|channel|>{channel}]<|message|>{text}<|end|>``.
The assistant thinks on the ``analysis`` channel and speaks on ``final``; the last message of a
training sample ends with ``<|return|>``. Our persona goes in the developer message (where gpt-oss
expects instructions); the system message carries the reasoning effort and the channel list.

:class:`HarmonyStreamParser` splits a streamed completion into thinking and speech, chunk by chunk,
so the chat shows the character's words as they come and never shows (or feeds back) the analysis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Iterable, Literal, Sequence

# Special tokens of the o200k_harmony vocabulary: text and id, the one table everyone uses.
START, END, MESSAGE, CHANNEL, RETURN, CALL, CONSTRAIN = (
    "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>",
)
STARTOFTEXT, ENDOFTEXT, ENDOFPROMPT = "<|startoftext|>", "<|endoftext|>", "<|endofprompt|>"
SPECIAL_TOKEN_IDS: dict[str, int] = {
    STARTOFTEXT: 199998,
    ENDOFTEXT: 199999,
    RETURN: 200002,
    CONSTRAIN: 200003,
    CHANNEL: 200005,
    START: 200006,
    END: 200007,
    MESSAGE: 200008,
    CALL: 200012,
    ENDOFPROMPT: 200018,
}
#: Tokens that end an assistant turn when generating.
STOP_TOKENS = (RETURN, CALL, ENDOFTEXT)

ReasoningEffort = Literal["low", "medium", "high"]
DEFAULT_IDENTITY = "You are a role-play companion that stays in character."

_SPECIAL = re.compile(r"<\|[a-z_0-9]+\|>")

#: Our harmony chat template (jinja, for tokenizer_config.json and GGUF metadata). It renders exactly
#: what :func:`render` renders, so HF ``apply_chat_template`` and llama.cpp agree with our prompts.
CHAT_TEMPLATE: str = resources.files(__package__).joinpath("templates/harmony.jinja").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; ``trainable`` marks what the loss is computed on (speech + its end)."""

    text: str
    trainable: bool = False


def system_message(reasoning_effort: ReasoningEffort = "low", identity: str = DEFAULT_IDENTITY) -> str:
    return (
        f"{identity}\n\nReasoning: {reasoning_effort}\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every message."
    )


def render_segments(
    developer: str,
    turns: Sequence[tuple[str, str]],
    *,
    reasoning_effort: ReasoningEffort = "low",
    add_generation_prompt: bool = True,
    identity: str = DEFAULT_IDENTITY,
) -> list[Segment]:
    """Render a conversation as harmony segments.

    ``turns`` are ``(role, text)`` with role ``user`` or ``assistant`` (assistant text is what the
    character says, the final channel). With ``add_generation_prompt`` the result ends with
    ``<|start|>assistant`` for the model to continue; without it, the last assistant turn ends with
    ``<|return|>`` as in training data. Assistant speech and its end token are ``trainable``.
    """
    segments = [Segment(f"{START}system{MESSAGE}{system_message(reasoning_effort, identity)}{END}")]
    if developer.strip():
        segments.append(Segment(f"{START}developer{MESSAGE}# Instructions\n\n{developer.strip()}{END}"))
    last = len(turns) - 1
    for i, (role, text) in enumerate(turns):
        if role == "user":
            segments.append(Segment(f"{START}user{MESSAGE}{text}{END}"))
        elif role == "assistant":
            end = RETURN if (i == last and not add_generation_prompt) else END
            segments.append(Segment(f"{START}assistant{CHANNEL}final{MESSAGE}"))
            segments.append(Segment(f"{text}{end}", trainable=True))
        else:
            raise ValueError(f"harmony turn role must be user or assistant, not {role!r}")
    if add_generation_prompt:
        segments.append(Segment(f"{START}assistant"))
    return segments


def render(developer: str, turns: Sequence[tuple[str, str]], **kwargs) -> str:
    """The harmony text of a conversation (see :func:`render_segments`)."""
    return "".join(segment.text for segment in render_segments(developer, turns, **kwargs))


# -- parsing ----------------------------------------------------------------------------------

Channel = Literal["analysis", "final"]


@dataclass(frozen=True)
class Delta:
    """A piece of streamed output on one channel; ``analysis`` covers every hidden channel."""

    channel: Channel
    text: str


@dataclass
class ParsedReply:
    analysis: str = ""
    final: str = ""
    finished: bool = False  # the reply is over (:func:`ends_reply`), not cut off
    channels: list[str] = field(default_factory=list)


_MARKERS = (START, END, MESSAGE, CHANNEL, RETURN, CALL, CONSTRAIN, ENDOFTEXT)
#: Markers that end the assistant's turn whatever channel they close.
TURN_END_MARKERS = (RETURN, CALL, ENDOFTEXT)


def channel_of(header: str) -> str:
    """The channel a message header names (``<|channel|>final``, ``to=functions.x<|channel|>commentary json``);
    a header without one is the final message (plain speech)."""
    match = re.search(re.escape(CHANNEL) + r"\s*([A-Za-z_]+)", header)
    return match.group(1) if match else "final"


def ends_reply(marker: str, channel: str | None) -> bool:
    """The one rule for when a harmony reply is over, for every generator (the chat on llama.cpp, evaluation on
    transformers or llama.cpp): at ``<|return|>``, ``<|call|>`` or ``<|endoftext|>``; and when the message on
    the final channel is closed (``<|end|>`` or a new ``<|start|>``): the character has spoken, and whatever a
    model writes after that is not part of the reply. The analysis message's ``<|end|>`` does not end it.
    ``channel`` is the channel of the message the marker closes (None while no message body is open)."""
    return marker in TURN_END_MARKERS or (marker in (END, START) and channel == "final")


def _partial_marker_len(buffer: str) -> int:
    """Length of the longest suffix of ``buffer`` that could be the start of a special token."""
    start = buffer.rfind("<", max(0, len(buffer) - 16))
    while start != -1:
        tail = buffer[start:]
        if any(marker.startswith(tail) for marker in _MARKERS):
            return len(tail)
        start = buffer.rfind("<", max(0, len(buffer) - 16), start)
    return 0


def _first_marker(buffer: str, markers: Sequence[str] = _MARKERS) -> tuple[int, str] | None:
    hits = [(i, m) for i, m in ((buffer.find(m), m) for m in markers) if i != -1]
    return min(hits) if hits else None


#: The words a header may have before its first marker: the role and a recipient (``assistant to=functions.x``,
#: or `` to=functions.x`` right after the prompt's ``<|start|>assistant``).
_ROLE, _RECIPIENT = "assistant", r"to=[^\s<]+"
_HEADER_WORDS = re.compile(rf"\s*(?:{_ROLE})?\s*(?:{_RECIPIENT})?\s*")


def _may_become_header_words(text: str) -> bool:
    """Whether ``text`` is, or may still grow into, the words of a header (it arrives in small chunks)."""
    rest = text.lstrip()
    if rest.startswith(_ROLE):
        rest = rest[len(_ROLE):].lstrip()
    elif _ROLE.startswith(rest):
        return True
    return "to=".startswith(rest) or re.fullmatch(rf"{_RECIPIENT}\s*", rest) is not None


class HarmonyStreamParser:
    """Incremental harmony parser: feed detokenized text in any chunking, get channel deltas.

    Works on output that starts right after ``<|start|>assistant`` (``<|channel|>analysis<|message|>…``, or a
    tool call's `` to=functions.x<|channel|>commentary…``), with or without the analysis part, with ``<|end|>``
    or without it before the next ``<|start|>``, and on plain text from a model that does not speak harmony
    (all of it is ``final``). The reply is over where :func:`ends_reply` says so; what follows is dropped.
    """

    def __init__(self) -> None:
        self._buffer = ""
        # opening: a header or plain text may start here; header: inside one; body: inside a message
        self._state: Literal["opening", "header", "body", "done"] = "opening"
        self._channel: Channel = "final"
        self._channel_name: str | None = None
        self._seen_header = False
        self.reply = ParsedReply()

    @property
    def channel(self) -> Channel:
        return self._channel

    @property
    def finished(self) -> bool:
        return self._state == "done"

    def feed(self, chunk: str) -> list[Delta]:
        self._buffer += chunk
        return self._drain(final=False)

    def close(self) -> list[Delta]:
        """Flush what is held back at the end of the stream."""
        return self._drain(final=True)

    def _emit(self, out: list[Delta], text: str) -> None:
        if not text:
            return
        out.append(Delta(self._channel, text))
        if self._channel == "final":
            self.reply.final += text
        else:
            self.reply.analysis += text

    def _drain(self, final: bool) -> list[Delta]:
        out: list[Delta] = []
        while self._buffer and self._state != "done":
            if self._state == "opening":
                progressed = self._consume_opening(final)
            elif self._state == "header":
                progressed = self._consume_header(final)
            else:
                progressed = self._consume_body(out, final)
            if not progressed:
                break
        if self._state == "done":
            self._buffer = ""
        return out

    def _finish(self) -> None:
        self._state, self._buffer, self.reply.finished = "done", "", True

    def _consume_opening(self, final: bool) -> bool:
        """Decide whether a header starts here (its words, then a header marker) or plain speech does."""
        buf = self._buffer
        found = _first_marker(buf)
        if found is not None:
            i, marker = found
            header = marker in (CHANNEL, CONSTRAIN, MESSAGE, START) and _HEADER_WORDS.fullmatch(buf[:i])
            self._state = "header" if header else "body"
            if not header:
                self._channel, self._channel_name = "final", "final"
            return True
        if final:
            if self._seen_header:  # a header that never got its message: nothing to say
                self._buffer, self._state = "", "done"
                return False
        elif _may_become_header_words(buf[: len(buf) - _partial_marker_len(buf)]):
            return False  # wait for more: a header or plain text
        self._state, self._channel, self._channel_name = "body", "final", "final"
        return True

    def _consume_header(self, final: bool) -> bool:
        buf = self._buffer
        found = _first_marker(buf, (MESSAGE, *TURN_END_MARKERS))
        if found is None:
            if final:  # a header that never got its message: nothing to say
                self._buffer, self._state = "", "done"
            return False
        pos, marker = found
        if ends_reply(marker, None):
            self._finish()
            return False
        header = buf[:pos]
        self._buffer = buf[pos + len(MESSAGE):]
        name = channel_of(header)
        self.reply.channels.append(name)
        self._channel_name = name
        self._channel = "final" if name == "final" else "analysis"
        self._state = "body"
        self._seen_header = True
        return True

    def _consume_body(self, out: list[Delta], final: bool) -> bool:
        buf = self._buffer
        found = _first_marker(buf, (END, START, RETURN, CALL, ENDOFTEXT, CHANNEL))
        if found is None:
            hold = 0 if final else _partial_marker_len(buf)
            self._emit(out, buf[: len(buf) - hold])
            self._buffer = buf[len(buf) - hold:]
            return False
        i, marker = found
        self._emit(out, buf[:i])
        rest = buf[i + len(marker):]
        if ends_reply(marker, self._channel_name):
            self._finish()
            return False
        if marker == END:
            self._state, self._buffer = "opening", rest
        elif marker == START:
            self._state, self._buffer = "header", rest
        else:  # a <|channel|> without <|start|>: a new header begins here
            self._state, self._buffer = "header", CHANNEL + rest
        self._channel_name = None
        return True


def parse_reply(text: str) -> ParsedReply:
    """Parse a whole completion (what follows ``<|start|>assistant``)."""
    parser = HarmonyStreamParser()
    parser.feed(text)
    parser.close()
    return parser.reply


def strip_special_tokens(text: str) -> str:
    """Remove every ``<|…|>`` token, as a tokenizer's ``skip_special_tokens=True`` decode would."""
    return _SPECIAL.sub("", text)


def final_text(text: str) -> str:
    """The speech of a completion or a reference: final channel only, special tokens removed."""
    if not _SPECIAL.search(text):
        return text.strip()
    return strip_special_tokens(parse_reply(text).final).strip()


def join_channels(deltas: Iterable[Delta]) -> ParsedReply:
    reply = ParsedReply()
    for delta in deltas:
        if delta.channel == "final":
            reply.final += delta.text
        else:
            reply.analysis += delta.text
    return reply
