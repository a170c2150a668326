"""One reply's text, as the engine's token loop detokenizes it, turned into what the character says.

It is its own module because deciding where a reply ends is not the engine's business: for harmony the
:class:`~haruhi_tui.core.harmony.HarmonyStreamParser` decides (by :func:`~haruhi_tui.core.harmony.ends_reply`,
the same rule evaluation uses), for the other styles the style's stop strings do.
"""

from __future__ import annotations

from typing import Sequence

from .harmony import Delta, HarmonyStreamParser
from .prompt_format import Style


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

    harmony: the parser splits analysis from final speech and says when the reply is over (``<|return|>``,
    ``<|call|>``, or the final message closed). Other styles: all text is speech, and the reply ends at the
    style's stop strings (the ``」`` of the play script), which are held back until it is clear they are not one.
    """

    def __init__(self, style: Style, stops: Sequence[str] = ()) -> None:
        self.style = style
        self.stops = [s for s in stops if s] if style != "harmony" else []
        self.parser = HarmonyStreamParser() if style == "harmony" else None
        self.finished = False
        self._pending = ""
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
            deltas = self.parser.feed(text)
            self.finished = self.parser.finished
            return self._record(deltas)
        self._pending += text
        hits = [(i, s) for i, s in ((self._pending.find(s), s) for s in self.stops) if i != -1]
        if hits:
            i = min(hits)[0]
            out, self._pending, self.finished = self._pending[:i], "", True
        else:
            keep = _held_back(self._pending, self.stops)
            out = self._pending[: len(self._pending) - keep]
            self._pending = self._pending[len(self._pending) - keep:]
        return self._record([Delta("final", out)] if out else [])

    def close(self) -> list[Delta]:
        """Flush what is held back (the stream ended without a stop string)."""
        if self.parser is not None:
            return self._record(self.parser.close()) if not self.parser.finished else []
        out, self._pending = self._pending, ""
        if self.finished or not out:
            return []
        return self._record([Delta("final", out)])
