"""The persona prompt builder: the one place that decides what a character's prompt contains.

Dataset building, chat and evaluation all call :class:`PersonaBuilder`, so a model is trained on
exactly the shape of prompt it later sees. The layout puts what is stable first and what changes
last, so llama.cpp can reuse the prefix from its KV cache turn after turn::

    system:  role prompt | pinned facts | rolling summary | classic scenes (sticky)
    turns:   history (oldest cut first) ... | the current message

Scenes are retrieved for the current message but *sticky*: a chat keeps its scenes while they stay
relevant and swaps them only on a change of topic, which keeps the system block (and the KV cache)
stable across most turns. They change more often than the pins and the summary, so they come last in
the system block, and scenes that stay keep their places ahead of new ones (``scene_order``): a change
of topic re-evaluates only from the first scene that left. Every block carries its token count and what
was cut, for the context view.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Sequence

from .characters import Character, Line, Scene, format_line
from .retrieval import BM25Index, tokenize

TokenCounter = Callable[[str], int]
Role = Literal["user", "assistant"]

_CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")

SCENES_HEADER = "Classic scenes:"
PINS_HEADER = "Facts to remember:"
SUMMARY_HEADER = "Earlier in this conversation:"
SCENE_SEPARATOR = "\n---\n"


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about one token per CJK character, four other characters a token).

    Used where no tokenizer is at hand (dataset building); the chat passes the model's real counter.
    """
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk + 3) // 4


def names_a_topic(text: str) -> bool:
    """Whether a line (one still being typed) says enough to pick scenes for: two words of two characters or
    more. A shorter one shares a word with some scene by chance (``我觉`` with any scene that has ``觉``)."""
    return sum(len(word) >= 2 for word in tokenize(text)) >= 2


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation. ``speaker`` is who says it: the user's name or the character's.

    An empty ``speaker`` means ``text`` is already written as script lines (a dataset's user turn
    that merges several speakers and narration).
    """

    role: Role
    text: str
    speaker: str

    def as_line(self) -> str:
        """The turn as a script line, ``speaker:「text」``: how user turns are written everywhere."""
        return format_line(Line(self.speaker, self.text)) if self.speaker else self.text


@dataclass(frozen=True)
class PromptBudget:
    """Token budgets of each block (counted with the builder's token counter)."""

    role: int = 1500
    scenes: int = 1200
    max_scenes: int = 4
    pins: int = 300
    summary: int = 500
    history: int = 1500


@dataclass
class Block:
    """One block of a built prompt, for the context view: what it is, its text, its size, what was cut."""

    kind: Literal["role", "scenes", "pins", "summary", "history", "message"]
    title: str
    text: str
    tokens: int
    cut: str = ""


@dataclass
class PersonaPrompt:
    """A built prompt, independent of any model's format (see :mod:`haruhi_tui.core.prompt_format`)."""

    character: str
    user: str
    system: str
    turns: list[Turn]
    blocks: list[Block]
    scene_ids: list[str] = field(default_factory=list)
    dropped_turns: int = 0

    @property
    def tokens(self) -> int:
        return sum(block.tokens for block in self.blocks)


class PersonaBuilder:
    """Builds :class:`PersonaPrompt` for one character; holds the character's scene index."""

    def __init__(
        self,
        character: Character,
        budget: PromptBudget | None = None,
        count_tokens: TokenCounter = estimate_tokens,
    ) -> None:
        self.character = character
        self.budget = budget or PromptBudget()
        self.count_tokens = count_tokens
        self._scene_texts = [scene.text() for scene in character.scenes]
        self._scene_pos = {scene.scene_id: i for i, scene in enumerate(character.scenes)}
        self._index: BM25Index | None = None
        self._scene_tokens: dict[int, int] = {}

    @property
    def index(self) -> BM25Index:
        if self._index is None:  # built on first use: a picker that lists characters never pays for it
            self._index = BM25Index(self._scene_texts)
        return self._index

    # -- scenes -------------------------------------------------------------------------------
    def select_scenes(
        self,
        query: str,
        *,
        exclude_ids: Iterable[str] = (),
        sticky_ids: Sequence[str] = (),
        scene_order: Sequence[str] = (),
    ) -> list[Scene]:
        """Scenes for ``query`` within the scene budget: those in ``scene_order`` (default ``sticky_ids``)
        first, in that order, then new ones best first.

        ``sticky_ids`` (the previous turn's choice) are kept while one of them still shares a word with
        ``query``, or ``query`` matches nothing: the topic has not changed. Chat lines are short and
        per-line rankings jump around, so "still relevant" rather than "still the best" is what keeps
        the system block (and llama.cpp's KV cache) stable over a conversation. ``scene_order`` is the
        order of the prompt llama.cpp evaluated last: a scene that stays keeps its place, so the cached
        prompt stays usable up to the first scene that left.
        """
        excluded = {self._scene_pos[s] for s in exclude_ids if s in self._scene_pos}
        ranked = self.index.rank(query, exclude=excluded)
        sticky = [self._scene_pos[s] for s in sticky_ids if s in self._scene_pos and self._scene_pos[s] not in excluded]
        if sticky:
            matched = self.index.scores(query)
            if not matched or any(matched.get(i, 0.0) > 0 for i in sticky):
                return self._in_order([self.character.scenes[i] for i in sticky], scene_order or sticky_ids)
        chosen: list[Scene] = []
        used = 0
        for i in itertools.islice(ranked, 8 * self.budget.max_scenes):
            if len(chosen) >= self.budget.max_scenes:
                break
            if i not in self._scene_tokens:
                self._scene_tokens[i] = self.count_tokens(self._scene_texts[i])
            cost = self._scene_tokens[i]
            if used + cost > self.budget.scenes:
                continue
            chosen.append(self.character.scenes[i])
            used += cost
        return self._in_order(chosen, scene_order or sticky_ids)

    @staticmethod
    def _in_order(scenes: list[Scene], order: Sequence[str]) -> list[Scene]:
        """``scenes`` that are in ``order`` first, in that order; the others after them as they were."""
        place = {scene_id: i for i, scene_id in enumerate(order)}
        return sorted(scenes, key=lambda s: place.get(s.scene_id, len(place)))

    # -- the prompt ---------------------------------------------------------------------------
    def build(
        self,
        history: Sequence[Turn],
        message: Turn | None = None,
        *,
        query: str | None = None,
        exclude_scene_ids: Iterable[str] = (),
        sticky_scene_ids: Sequence[str] = (),
        scene_order: Sequence[str] = (),
        pins: Sequence[str] = (),
        summary: str = "",
        user_name: str | None = None,
    ) -> PersonaPrompt:
        """Build the prompt for ``history`` followed by ``message`` (the turn the model answers).

        ``query`` is what scenes are retrieved for (default: the message, else the last history turn);
        ``exclude_scene_ids`` keeps a sample's own scene out of its prompt (no leakage in datasets);
        ``sticky_scene_ids`` and ``scene_order``: see :meth:`select_scenes`.
        """
        c, b = self.character, self.budget
        blocks: list[Block] = []

        role_text, role_cut = self._fit(c.role_prompt.strip(), b.role)
        blocks.append(Block("role", "Role prompt", role_text, self.count_tokens(role_text), role_cut))

        pins_text = ""
        kept_pins = [p.strip() for p in pins if p.strip()]
        if kept_pins:
            pins_text, pins_cut = self._fit(PINS_HEADER + "\n" + "\n".join(f"- {p}" for p in kept_pins), b.pins)
            blocks.append(Block("pins", f"Pinned facts ({len(kept_pins)})", pins_text, self.count_tokens(pins_text),
                                pins_cut))

        summary_text = ""
        if summary.strip():
            summary_text, summary_cut = self._fit(SUMMARY_HEADER + "\n" + summary.strip(), b.summary)
            blocks.append(Block("summary", "Summary", summary_text, self.count_tokens(summary_text), summary_cut))

        if query is None:
            source = message or (history[-1] if history else None)
            query = source.text if source else ""
        scenes = self.select_scenes(query, exclude_ids=exclude_scene_ids, sticky_ids=sticky_scene_ids,
                                    scene_order=scene_order)
        scenes_text = ""
        if scenes:
            scenes_text = SCENES_HEADER + "\n" + SCENE_SEPARATOR.join(
                self._scene_texts[self._scene_pos[s.scene_id]] for s in scenes)
            blocks.append(
                Block("scenes", f"Classic scenes ({len(scenes)})", scenes_text, self.count_tokens(scenes_text))
            )

        system = "\n\n".join(part for part in (role_text, pins_text, summary_text, scenes_text) if part)

        kept, dropped = self._fit_history(history)
        if kept or dropped:
            history_text = "\n".join(t.as_line() for t in kept)
            cut = f"{dropped} older turn(s) left out" if dropped else ""
            blocks.append(Block("history", f"History ({len(kept)} turns)", history_text,
                                self.count_tokens(history_text), cut))
        turns = list(kept)
        if message is not None:
            turns.append(message)
            blocks.append(Block("message", "Current message", message.as_line(), self.count_tokens(message.as_line())))

        return PersonaPrompt(
            character=c.name,
            user=user_name or (message.speaker if message and message.role == "user" else c.interlocutor),
            system=system,
            turns=turns,
            blocks=blocks,
            scene_ids=[s.scene_id for s in scenes],
            dropped_turns=dropped,
        )

    def _fit_history(self, history: Sequence[Turn]) -> tuple[list[Turn], int]:
        """The most recent turns within the history budget, starting on a user turn where possible."""
        kept: list[Turn] = []
        used = 0
        for turn in reversed(history):
            cost = self.count_tokens(turn.as_line()) + 4
            if used + cost > self.budget.history:
                break
            kept.append(turn)
            used += cost
        kept.reverse()
        while kept and kept[0].role == "assistant" and len(kept) < len(history):
            kept.pop(0)  # a history that opens with the character answering nobody reads oddly
        return kept, len(history) - len(kept)

    def _fit(self, text: str, budget: int) -> tuple[str, str]:
        """``text`` cut at a line boundary to fit ``budget`` tokens, and a note of what was cut."""
        if self.count_tokens(text) <= budget:
            return text, ""
        lines = text.splitlines()
        while lines and self.count_tokens("\n".join(lines)) > budget:
            lines.pop()
        kept = "\n".join(lines)
        if not kept:  # one huge line: cut by characters
            kept = text
            while kept and self.count_tokens(kept) > budget:
                kept = kept[: int(len(kept) * 0.9)]
        return kept, f"cut to {budget} tokens (was {self.count_tokens(text)})"
