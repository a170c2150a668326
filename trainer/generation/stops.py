"""Where one generated sequence's reply ends, decided token by token as it is sampled.

Every engine stops each sequence by its own rule: the model's end tokens; for harmony, harmony's one rule
for every generator, :func:`haruhi_tui.core.harmony.ends_reply` (``<|return|>``, or the final message
closed by ``<|end|>`` or a new ``<|start|>``); for the play script, its closing ``」``. The rule runs once
per token per sequence, so it follows harmony on token ids and decodes only a message's header.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from haruhi_tui.core import harmony
from haruhi_tui.core.prompt_format import Style, stop_strings

from .decoding import Request

#: Harmony's structural tokens by id: the only tokens the harmony rule has to look at.
_MARKER_OF_ID: dict[int, str] = {
    harmony.SPECIAL_TOKEN_IDS[marker]: marker
    for marker in (harmony.START, harmony.END, harmony.MESSAGE, *harmony.TURN_END_MARKERS)
}


class StopRule:
    """Decides, token by token, whether one sequence's reply is complete.

    ``end_ids`` are the model's end-of-generation tokens. Harmony ends where :func:`harmony.ends_reply`
    says: at ``<|return|>``/``<|call|>``/``<|endoftext|>``, and when the *final*-channel message is closed
    by ``<|end|>`` or a new ``<|start|>`` (the analysis message's ``<|end|>`` does not end the reply).
    The channel a header names is read by :func:`harmony.channel_of`. The script style ends at its stop
    strings (``」``, newline). ``decode`` turns ids into text (only for headers and stop strings).
    """

    def __init__(self, style: Style, end_ids: Iterable[int], decode: Callable[[Sequence[int]], str],
                 stops: Sequence[str] | None = None) -> None:
        self.style = style
        self.end_ids = set(end_ids)
        self.decode = decode
        self.stops = list(stops) if stops is not None else (stop_strings(style) if style == "script" else [])
        self._ids: list[int] = []
        self._header: list[int] = []
        # The channel of the message whose body is being generated; None while a header is (the output
        # starts right after ``<|start|>assistant``, in a header).
        self._channel: str | None = None

    def push(self, token: int) -> bool:
        self._ids.append(token)
        if self.style == "harmony":
            marker = _MARKER_OF_ID.get(token)
            if marker is not None:
                return self._harmony(marker)
            if self._channel is None:
                self._header.append(token)
            return self._model_end(token)
        if self._model_end(token):
            return True
        if self.stops:
            tail = self.decode(self._ids[-8:])
            return any(s in tail for s in self.stops)
        return False

    def _model_end(self, token: int) -> bool:
        """The model's own end-of-generation tokens (harmony's markers are left to harmony's rule)."""
        return token in self.end_ids

    def _harmony(self, marker: str) -> bool:
        if marker == harmony.MESSAGE:
            if self._channel is None:
                self._channel = harmony.channel_of(self.decode(self._header))
            return False
        if harmony.ends_reply(marker, self._channel):
            return True
        self._header, self._channel = [], None  # <|end|> or <|start|> of a message that goes on: a new header
        return False


class EogStopRule(StopRule):
    """A :class:`StopRule` that also ends at any token llama.cpp marks end-of-generation, except harmony's
    own markers: llama.cpp lists ``<|end|>`` as end-of-generation, but only the final message's ends a reply."""

    def __init__(self, style: Style, end_ids: Iterable[int], decode: Callable[[Sequence[int]], str],
                 is_eog: Callable[[int], bool], stops: Sequence[str] | None = None) -> None:
        super().__init__(style, end_ids, decode, stops)
        self._is_eog = is_eog

    def _model_end(self, token: int) -> bool:
        return token in self.end_ids or self._is_eog(token)


class FixedLengthStop:
    """Stops after a fixed number of tokens (benchmarks: random weights never say <|return|>)."""

    def __init__(self, length: int) -> None:
        self.length, self.n = max(1, length), 0

    def push(self, token: int) -> bool:
        self.n += 1
        return self.n >= self.length


StopFactory = Callable[[Request], "StopRule | FixedLengthStop"]
