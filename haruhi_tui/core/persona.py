"""The persona prompt builder: the one place that decides what a character's prompt contains.

Dataset building, chat and evaluation all call :class:`PersonaBuilder`, so a model is trained on
exactly the shape of prompt it later sees. The layout puts what is stable first and what changes
last, so llama.cpp can reuse the prefix from its KV cache turn after turn::

    system:  role prompt | user persona | pinned facts | rolling summary | classic scenes (sticky) | world info
    turns:   history (oldest cut first) ... | the current message
             with notes folded in N messages from the end: the character's depth prompt, world info
             at depth, the author's note (depth 4), post-history instructions (after the last message)

Scenes are retrieved for the current message but *sticky*: a chat keeps its scenes while they stay
relevant and swaps them only on a change of topic, which keeps the system block (and the KV cache)
stable across most turns. They change more often than the persona, the pins and the summary, so they come
after them, and scenes that stay keep their places ahead of new ones (``scene_order``): a change of topic
re-evaluates only from the first scene that left. When the line being typed changes the scenes too late for
that to be evaluated before Enter, the chat holds the system block's scenes for one turn and tells the new
ones beside the message (``held_scene_ids``); the next prompt puts them in place, evaluated while the next
line is typed. World info (:mod:`~haruhi_tui.core.lore_scan`) comes last
in the system block because it changes most often (none in most chats, where the scenes are last), and its
entries stay a few messages after they fire. A note at a depth moves with the conversation, so it costs the
re-reading of the last few messages only. Notes are written into the user turn they sit beside as a
narration line ``（…）``, the way scenes write narration, so every prompt style (harmony, chat templates, the
play script) carries them. ``{{user}}`` and ``{{char}}`` resolve to the persona's and the character's names
everywhere. Every block carries its token count and what was cut, for the context view.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Iterable, Literal, Sequence

from .characters import Character, Line, Scene, format_line
from .lore_scan import LoreActivation, LoreSettings, activate
from .lorebook import Lorebook
from .retrieval import BM25Index, tokenize
from .roleplay import AuthorsNote, UserPersona, substitute_macros

TokenCounter = Callable[[str], int]
Role = Literal["user", "assistant"]

_CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")

SCENES_HEADER = "Classic scenes:"
PINS_HEADER = "Facts to remember:"
SUMMARY_HEADER = "Earlier in this conversation:"
PERSONA_HEADER = "Who you are talking to: {name}"
LORE_HEADER = "World info:"
#: Where world-info entries of each SillyTavern position go in the system block (all after the stable parts).
LORE_SYSTEM_ORDER = ("before_char", "after_char", "em_top", "em_bottom")
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
    persona: int = 300   # the user persona's description
    lore: int = 600      # world-info entries, wherever they go
    notes: int = 300     # author's note, the character's depth prompt and post-history instructions together


TEMPLATE_OVERHEAD = 200  # tokens a chat template or harmony header adds around the persona text


def budget_for(n_ctx: int, max_tokens: int, base: PromptBudget | None = None, *, persona: bool = False,
               lore: bool = False, notes: bool = False) -> PromptBudget:
    """The default budgets, shrunk in proportion when the context is too small to hold them and a reply.
    The persona, world-info and notes budgets count only when the chat uses them (the flags)."""
    base = base or PromptBudget()
    optional = {"persona": persona, "lore": lore, "notes": notes}
    total = base.role + base.scenes + base.pins + base.summary + base.history
    total += sum(getattr(base, name) for name, used in optional.items() if used)
    room = n_ctx - min(max_tokens, n_ctx // 4) - TEMPLATE_OVERHEAD
    if room >= total:
        return base
    f = max(room, 200) / total
    scaled = ("role", "scenes", "pins", "summary", "history", *optional)
    return replace(base, **{name: int(getattr(base, name) * f) for name in scaled})


@dataclass
class Block:
    """One block of a built prompt, for the context view: what it is, its text, its size, what was cut."""

    kind: Literal["role", "persona", "scenes", "pins", "summary", "lore", "history", "character_note",
                  "authors_note", "message", "post_history"]
    title: str
    text: str
    tokens: int
    cut: str = ""
    detail: str = ""  # one line per item where a block lists several (world info: each entry and the key that fired)


@dataclass
class PersonaPrompt:
    """A built prompt, independent of any model's format (see :mod:`haruhi_tui.core.prompt_format`)."""

    character: str
    user: str
    system: str
    turns: list[Turn]
    blocks: list[Block]
    scene_ids: list[str] = field(default_factory=list)
    #: The scenes of the system block, in order: ``scene_ids`` unless scenes were held (see ``build``).
    system_scene_ids: list[str] = field(default_factory=list)
    dropped_turns: int = 0
    persona: UserPersona | None = None
    lore: LoreActivation = field(default_factory=LoreActivation)

    @property
    def tokens(self) -> int:
        return sum(block.tokens for block in self.blocks)

    def resolve(self, text: str) -> str:
        """``{{user}}``/``{{char}}`` in ``text`` as this prompt resolves them (a dataset's target line)."""
        description = self.persona.description if self.persona else ""
        return substitute_macros(text, user=self.user, char=self.character, persona=description)


class PersonaBuilder:
    """Builds :class:`PersonaPrompt` for one character; holds the character's scene index."""

    def __init__(
        self,
        character: Character,
        budget: PromptBudget | None = None,
        count_tokens: TokenCounter = estimate_tokens,
        lore_settings: LoreSettings | None = None,
    ) -> None:
        self.character = character
        self.budget = budget or PromptBudget()
        self.count_tokens = count_tokens
        self.lore_settings = lore_settings or LoreSettings()
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
        held_scene_ids: Sequence[str] = (),
        pins: Sequence[str] = (),
        summary: str = "",
        user_name: str | None = None,
        persona: UserPersona | None = None,
        lorebooks: Sequence[Lorebook] = (),
        authors_note: AuthorsNote | None = None,
        scan_turns: Sequence[Turn] | None = None,
    ) -> PersonaPrompt:
        """Build the prompt for ``history`` followed by ``message`` (the turn the model answers).

        ``query`` is what scenes are retrieved for (default: the message, else the last history turn);
        ``exclude_scene_ids`` keeps a sample's own scene out of its prompt (no leakage in datasets);
        ``sticky_scene_ids`` and ``scene_order``: see :meth:`select_scenes`.
        ``held_scene_ids`` (the chat, when the line changed the scenes at its last keystrokes): the system block
        keeps exactly these scenes, the ones llama.cpp holds, and a chosen scene not among them is told beside
        the message (before the line, as the notes are), so the history after the system block stays cached.
        ``persona`` is who the user plays (default: the character's usual interlocutor, or ``user_name``);
        ``lorebooks`` are the chat's, checked before the character's own ``lorebook.json``, over
        ``scan_turns`` (the whole conversation; default ``history`` and ``message``); ``authors_note`` goes
        in with the character's depth prompt and post-history instructions from its ``character.json``.
        """
        c, b = self.character, self.budget
        persona = self._persona(persona, user_name, message)
        macros = partial(substitute_macros, user=persona.name, char=c.name, persona=persona.description)
        blocks: list[Block] = []

        role_text, role_cut = self._fit(macros(c.role_prompt.strip()), b.role)
        blocks.append(Block("role", "Role prompt", role_text, self.count_tokens(role_text), role_cut))

        persona_text = ""
        if persona.description:
            header = PERSONA_HEADER.format(name=persona.name)
            persona_text, cut = self._fit(header + "\n" + persona.description, b.persona)
            blocks.append(Block("persona", f"Persona: {persona.name}", persona_text, self.count_tokens(persona_text),
                                cut))

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
        held = [self.character.scenes[self._scene_pos[i]] for i in held_scene_ids if i in self._scene_pos]
        in_system = held or scenes
        late = [s for s in scenes if s not in held] if held and message is not None else []  # told beside it
        scenes_text = self._scenes_text(in_system, macros)
        if scenes_text:
            blocks.append(Block("scenes", f"Classic scenes ({len(in_system)})", scenes_text,
                                self.count_tokens(scenes_text)))
        late_text = self._scenes_text(late, macros)

        scan = list(scan_turns) if scan_turns is not None else [*history, *([message] if message else [])]
        lore = self._lore(lorebooks, scan, macros)
        lore_text = ""
        lore_in_system = [a for pos in LORE_SYSTEM_ORDER for a in lore.at(pos)]
        if lore_in_system:
            lore_text = LORE_HEADER + "\n" + "\n".join(a.content for a in lore_in_system)
        if lore.entries or lore.cut:
            blocks.append(self._lore_block(lore, lore_text))

        parts = (role_text, persona_text, pins_text, summary_text, scenes_text, lore_text)
        system = "\n\n".join(part for part in parts if part)

        kept, dropped = self._fit_history(history)
        kept = [_resolved(t, macros) for t in kept]
        message = _resolved(message, macros) if message is not None else None
        if kept or dropped:
            history_text = "\n".join(t.as_line() for t in kept)
            cut = f"{dropped} older turn(s) left out" if dropped else ""
            blocks.append(Block("history", f"History ({len(kept)} turns)", history_text,
                                self.count_tokens(history_text), cut))
        turns = list(kept)
        if message is not None:
            turns.append(message)
        insertions, note_blocks = self._notes(authors_note, lore, macros)
        blocks.extend(block for block in note_blocks if block.kind != "post_history")
        if late_text:
            blocks.append(Block("scenes", f"Classic scenes beside the message ({len(late)})", late_text,
                                self.count_tokens(late_text)))
        if message is not None:
            blocks.append(Block("message", "Current message", message.as_line(), self.count_tokens(message.as_line())))
        blocks.extend(block for block in note_blocks if block.kind == "post_history")

        return PersonaPrompt(
            character=c.name,
            user=persona.name,
            system=system,
            turns=_told_before_last(fold_notes(turns, insertions), late_text),
            blocks=blocks,
            scene_ids=[s.scene_id for s in scenes],
            system_scene_ids=[s.scene_id for s in in_system],
            dropped_turns=dropped,
            persona=persona,
            lore=lore,
        )

    def _scenes_text(self, scenes: Sequence[Scene], macros: Callable[[str], str]) -> str:
        texts = [self._scene_texts[self._scene_pos[s.scene_id]] for s in scenes]
        return macros(SCENES_HEADER + "\n" + SCENE_SEPARATOR.join(texts)) if texts else ""  # a card's {{user}}:「…」

    def _persona(self, persona: UserPersona | None, user_name: str | None, message: Turn | None) -> UserPersona:
        """Who the user plays, with ``{{user}}``/``{{char}}`` in the description resolved."""
        if persona is None:
            name = user_name or (message.speaker if message and message.role == "user" and message.speaker else "")
            default = UserPersona.default_for(self.character)
            persona = default if not name or name == default.name else UserPersona(name)
        description = substitute_macros(persona.description.strip(), user=persona.name, char=self.character.name)
        return UserPersona(persona.name, description)

    def _lore(self, lorebooks: Sequence[Lorebook], scan: Sequence[Turn],
              macros: Callable[[str], str]) -> LoreActivation:
        books = [*lorebooks, *([self.character.lorebook] if self.character.lorebook else [])]
        if not books:
            return LoreActivation(budget=self.budget.lore)
        return activate(books, scan, budget=self.budget.lore, count_tokens=self.count_tokens,
                        settings=self.lore_settings, macros=macros)

    def _lore_block(self, lore: LoreActivation, system_text: str) -> Block:
        """Every entry that fired, with why; those the budget left out are the block's cut."""
        elsewhere = [a.content for a in lore.entries if a.entry.position not in LORE_SYSTEM_ORDER]
        text = "\n\n".join(part for part in (system_text, "\n".join(elsewhere)) if part)
        detail = "\n".join(f"{a.title} ({a.book}): {a.reason}" + (
            "" if a.entry.position in LORE_SYSTEM_ORDER else f" [{a.entry.position.replace('_', ' ')}]")
            for a in lore.entries)
        cut = ""
        if lore.cut:
            cut = f"{len(lore.cut)} over the {lore.budget}-token budget: " + ", ".join(a.title for a in lore.cut)
        return Block("lore", f"World info ({len(lore.entries)})", text, self.count_tokens(text), cut, detail)

    def _notes(self, note: AuthorsNote | None, lore: LoreActivation,
               macros: Callable[[str], str]) -> tuple[list[tuple[int, str]], list[Block]]:
        """The notes that go between the turns, as ``(depth, text)`` in insertion order, and their blocks.

        The notes share one budget, filled in order: the character's depth prompt, the author's note, then
        the post-history instructions. World info placed at a depth or around the author's note comes
        out of the world-info budget and is counted in its block.
        """
        manifest = self.character.manifest
        left = self.budget.notes
        insertions: list[tuple[int, str]] = []
        blocks: list[Block] = []

        def fit(kind: str, title: str, text: str) -> str:
            nonlocal left
            text = macros(text.strip())
            if not text:
                return ""
            fitted, cut = self._fit(text, max(left, 0))
            tokens = self.count_tokens(fitted)
            left -= tokens
            blocks.append(Block(kind, title, fitted, tokens, cut))  # type: ignore[arg-type]
            return fitted

        depth_prompt = manifest.depth_prompt
        character_note = fit("character_note", f"Character's note (depth {depth_prompt.depth})", depth_prompt.prompt)
        if character_note:
            insertions.append((depth_prompt.depth, character_note))
        insertions.extend((a.entry.depth, a.content) for a in lore.at("at_depth"))
        note = note or AuthorsNote()
        authors = fit("authors_note", f"Author's note (depth {note.depth})", note.text)
        around = [*(a.content for a in lore.at("an_top")), authors, *(a.content for a in lore.at("an_bottom"))]
        if any(around):
            insertions.append((note.depth, "\n".join(part for part in around if part)))
        after = fit("post_history", "Post-history instructions", manifest.post_history_instructions)
        if after:
            insertions.append((0, after))
        return insertions, blocks

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


def fold_notes(turns: Sequence[Turn], insertions: Sequence[tuple[int, str]]) -> list[Turn]:
    """Each ``(depth, text)`` as a narration line ``depth`` turns from the end (0: after the last turn).

    A note joins the user turn right after its place (before that user's line) or right before it (after
    the line); between two character turns, or before the character's opening line, it becomes a user turn
    of its own. A depth beyond the conversation puts the note at its start, like SillyTavern.
    """
    if not insertions:
        return list(turns)
    n = len(turns)
    before: dict[int, list[str]] = {}
    after: dict[int, list[str]] = {}
    alone: dict[int, list[str]] = {}
    for depth, text in insertions:
        line = format_line(Line(None, text))
        i = max(0, n - depth)
        if i < n and turns[i].role == "user":
            before.setdefault(i, []).append(line)
        elif i > 0 and turns[i - 1].role == "user":
            after.setdefault(i - 1, []).append(line)
        else:
            alone.setdefault(i, []).append(line)
    out: list[Turn] = []
    for i, turn in enumerate(turns):
        if i in alone:
            out.append(Turn("user", "\n".join(alone[i]), ""))
        if i in before or i in after:
            turn = Turn("user", "\n".join([*before.get(i, []), turn.as_line(), *after.get(i, [])]), "")
        out.append(turn)
    if n in alone:
        out.append(Turn("user", "\n".join(alone[n]), ""))
    return out


def _told_before_last(turns: list[Turn], text: str) -> list[Turn]:
    """``text`` (scenes held out of the system block) as the first lines of the last turn, the message's."""
    return [*turns[:-1], Turn("user", text + "\n\n" + turns[-1].as_line(), "")] if text else turns


def _resolved(turn: Turn, macros: Callable[[str], str]) -> Turn:
    """A turn with its macros resolved; what the user typed is left as typed."""
    if turn.role == "user" and turn.speaker:
        return turn
    text = macros(turn.text)
    return turn if text == turn.text else Turn(turn.role, text, turn.speaker)
