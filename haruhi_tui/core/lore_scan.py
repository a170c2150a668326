"""Which lorebook entries a conversation activates, the way SillyTavern's ``world-info.js`` decides it.

Primary keys (plain text, or ``/regex/flags``; case-insensitive and substring by default, whole-word
optional with SillyTavern's ASCII word boundaries, so a CJK key matches inside a sentence), secondary keys
with AND ANY / NOT ALL / NOT ANY / AND ALL logic, constant entries, a scan depth over the last messages
(2 by default), recursion, inclusion groups, probability, delay and cooldown; then a token budget filled in
priority order (entries that stay first, then the chat's lorebooks before the character's, higher
``order`` first) that stops at the first entry that does not fit, like SillyTavern's. In the prompt,
entries are ordered by insertion order (``order``), never by when they fired.

What differs keeps llama.cpp's KV cache warm and the prompt a pure function of the conversation:

* an entry that fired *stays* for a few messages after its keys were last seen (``LoreSettings.stay``,
  or the entry's own ``sticky``), so a passing mention does not add and drop it turn after turn;
* there is no stored timed-effect state: stays, cooldowns and delays are worked out from the messages
  themselves, so regenerating, editing or switching branches gives the same entries;
* probability and inclusion-group rolls are seeded by the entry and the message instead of random, so
  the same conversation always gets the same entries.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

from .lorebook import Lorebook, LoreEntry

_REGEX_KEY = re.compile(r"^/([\w\W]+?)/([gimsuy]*)$")
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}


class ScanMessage(Protocol):
    """What a scan reads of a message (a :class:`~haruhi_tui.core.persona.Turn`): its role and its line."""

    role: str

    def as_line(self) -> str: ...


@dataclass(frozen=True)
class LoreSettings:
    """The chat-wide defaults SillyTavern keeps in its world-info settings, plus how long an entry stays."""

    scan_depth: int = 2
    case_sensitive: bool = False
    match_whole_words: bool = False
    recursive: bool = False
    max_recursion: int = 3
    stay: int = 4  # messages an entry stays after its keys were last seen (an entry's own sticky wins)


@dataclass(frozen=True)
class ActiveEntry:
    """An entry that fired: its text as it goes into the prompt, and why it is there."""

    book: str
    entry: LoreEntry
    content: str
    reason: str
    tokens: int

    @property
    def title(self) -> str:
        return self.entry.title


@dataclass
class LoreActivation:
    entries: list[ActiveEntry] = field(default_factory=list)  # in the prompt, in insertion order
    cut: list[ActiveEntry] = field(default_factory=list)      # fired, but over the token budget
    budget: int = 0

    def at(self, *positions: str) -> list[ActiveEntry]:
        return [a for a in self.entries if a.entry.position in positions]


class _Key:
    """One key, compiled the way SillyTavern matches it."""

    def __init__(self, key: str, case_sensitive: bool, whole_words: bool, use_regex: bool) -> None:
        self.key = key
        self.raw = False  # a regex runs on the text as written, plain keys on the case-folded text
        self.needle: str | None = None
        self.regex: re.Pattern | None = None
        match = _REGEX_KEY.match(key)
        if match or use_regex:
            pattern, flags = (match.group(1), match.group(2)) if match else (key, "")
            try:
                self.regex = re.compile(pattern, sum(_FLAGS.get(f, 0) for f in set(flags)))
                self.raw = True
                return
            except re.error:
                pass  # not a usable regex: matched as plain text, like SillyTavern
        needle = key if case_sensitive else key.lower()
        if whole_words and len(needle.split()) == 1:
            self.regex = re.compile(r"(?:^|\W)(" + re.escape(needle) + r")(?:$|\W)", re.ASCII)
        else:
            self.needle = needle

    def found(self, text: str, folded: str) -> bool:
        if self.needle is not None:
            return self.needle in folded
        return bool(self.regex.search(text if self.raw else folded))  # type: ignore[union-attr]


@dataclass(eq=False)
class _Candidate:
    book_index: int
    index: int
    book: Lorebook
    entry: LoreEntry
    primary: list[_Key]
    secondary: list[_Key]
    scan_depth: int
    case_sensitive: bool
    stay: int
    recursive: bool

    @property
    def seed(self) -> str:
        return f"{self.book.name}\x00{self.entry.uid}"


def _roll(seed: str) -> float:
    """A number in [0, 100) fixed by ``seed``: a probability roll that is the same every time it is made."""
    return zlib.crc32(seed.encode("utf-8")) % 10_000 / 100


def _quote(keys: Iterable[str]) -> str:
    return ", ".join(f"“{k}”" for k in keys)


class _Scan:
    """One activation: the messages, the windows they make and the entries to check."""

    def __init__(self, books: Sequence[Lorebook], messages: Sequence[ScanMessage], settings: LoreSettings,
                 macros: Callable[[str], str]) -> None:
        self.settings = settings
        self.texts = [m.as_line().strip() for m in messages]
        self.n = len(self.texts)
        self.points = sorted({i + 1 for i, m in enumerate(messages) if m.role == "user"} | {self.n})
        self._windows: dict[tuple[int, int], tuple[str, str]] = {}
        self.candidates: list[_Candidate] = []
        for b, book in enumerate(books):
            for i, entry in enumerate(book.entries):
                if not entry.enabled or entry.never or not entry.content.strip():
                    continue
                case = settings.case_sensitive if entry.case_sensitive is None else entry.case_sensitive
                whole = settings.match_whole_words if entry.match_whole_words is None else entry.match_whole_words
                primary, secondary = ([_Key(k, case, whole, entry.use_regex)
                                       for k in (macros(k).strip() for k in keys) if k]
                                      for keys in (entry.keys, entry.secondary_keys))
                depth = entry.scan_depth if entry.scan_depth is not None else (
                    book.scan_depth if book.scan_depth is not None else settings.scan_depth)
                self.candidates.append(_Candidate(b, i, book, entry, primary, secondary, depth, case,
                                                  entry.sticky or settings.stay, settings.recursive or book.recursive))

    def window(self, p: int, depth: int, case_sensitive: bool) -> tuple[str, str]:
        """The last ``depth`` messages before point ``p``, joined the way SillyTavern joins its scan buffer."""
        key = (p, depth)
        if key not in self._windows:
            text = "\x01" + "\n\x01".join(self.texts[max(0, p - depth):p]) if depth > 0 and p > 0 else ""
            self._windows[key] = (text, text.lower())
        text, folded = self._windows[key]
        return text, text if case_sensitive else folded

    def fires(self, c: _Candidate, p: int, extra: str = "") -> str | None:
        """Why ``c``'s keys fire at point ``p`` (the scan window, plus ``extra`` text when recursing), or None."""
        text, folded = self.window(p, c.scan_depth, c.case_sensitive)
        if extra:
            text = f"{text}\n\x01{extra}"
            folded = text if c.case_sensitive else text.lower()
        primary = next((k.key for k in c.primary if k.found(text, folded)), None)
        if primary is None:
            return None
        if not c.secondary:
            return f"key “{primary}”"
        hits = [k.key for k in c.secondary if k.found(text, folded)]
        logic, keys = c.entry.logic, [k.key for k in c.secondary]
        if logic == "and_any" and hits:
            return f"key “{primary}” and “{hits[0]}”"
        if logic == "and_all" and len(hits) == len(keys):
            return f"key “{primary}” and all of {_quote(keys)}"
        if logic == "not_any" and not hits:
            return f"key “{primary}”, none of {_quote(keys)}"
        if logic == "not_all" and len(hits) < len(keys):
            return f"key “{primary}”, not “{next(k for k in keys if k not in hits)}”"
        return None

    def fires_at(self, c: _Candidate, p: int) -> str | None:
        """:meth:`fires`, then the entry's delay and its (seeded) probability roll at ``p``."""
        if p < c.entry.delay:
            return None
        reason = self.fires(c, p)
        if reason and c.entry.probability < 100 and _roll(f"{c.seed}\x00{p}") >= c.entry.probability:
            return None
        return reason

    def staying(self, c: _Candidate) -> tuple[str, bool] | None:
        """Whether ``c`` is active at the last point, why, and whether only because it stays."""
        if c.entry.cooldown:
            return self._timed(c)
        reason = self.fires_at(c, self.n)
        if reason:
            return reason, False
        for p in reversed(self.points):
            if p <= self.n - c.stay:
                break
            earlier = self.fires_at(c, p) if p < self.n else None
            if earlier:
                return f"{earlier}, {self.n - p} message(s) ago", True
        return None

    def _timed(self, c: _Candidate) -> tuple[str, bool] | None:
        """SillyTavern's sticky/cooldown timeline for an entry with a cooldown, replayed over the messages."""
        sticky_end: int | None = None
        cooldown_end: int | None = None
        fired_at, reason = 0, ""
        state: tuple[str, bool] | None = None
        for p in self.points:
            if sticky_end is not None and p >= sticky_end:
                sticky_end, cooldown_end = None, p + c.entry.cooldown
            elif cooldown_end is not None and p >= cooldown_end:
                cooldown_end = None
            state = None
            if sticky_end is not None:
                state = (f"{reason}, {p - fired_at} message(s) ago", True)
            elif cooldown_end is None:
                now = self.fires_at(c, p)
                if now:
                    fired_at, reason, state = p, now, (now, False)
                    sticky_end = p + c.stay if c.stay else None
                    cooldown_end = p + c.entry.cooldown
        return state  # the state at the last point, the message being answered


def activate(books: Sequence[Lorebook], messages: Sequence[ScanMessage], *, budget: int,
             count_tokens: Callable[[str], int], settings: LoreSettings = LoreSettings(),
             macros: Callable[[str], str] = lambda text: text) -> LoreActivation:
    """The entries of ``books`` that ``messages`` (oldest first, the one being answered last) activate,
    within ``budget`` tokens. ``books`` come in priority order (the chat's before the character's);
    ``macros`` resolves ``{{user}}``/``{{char}}`` in keys and contents."""
    scan = _Scan(books, messages, settings, macros)
    active: dict[_Candidate, tuple[str, bool]] = {}
    for c in scan.candidates:
        if scan.n < c.entry.delay:
            continue
        if c.entry.constant:
            if c.entry.probability >= 100 or _roll(f"{c.seed}\x00{scan.n}") < c.entry.probability:
                active[c] = ("constant", False)
        elif c.primary:
            state = scan.staying(c)
            if state:
                active[c] = state
    _recurse(scan, active)
    _inclusion_groups(active)
    return _fit_budget(active, budget, count_tokens, macros)


def _recurse(scan: _Scan, active: dict[_Candidate, tuple[str, bool]]) -> None:
    """Entries whose keys appear in the content of entries already active (where the lorebook recurses)."""
    new = list(active)
    for _ in range(scan.settings.max_recursion):
        text = "\n".join(c.entry.content for c in new if not c.entry.prevent_recursion)
        if not text:
            return
        new = []
        for c in scan.candidates:
            if c in active or not c.recursive or c.entry.exclude_recursion or not c.primary or c.entry.cooldown:
                continue
            if scan.n < c.entry.delay or scan.fires(c, scan.n) is not None:
                continue  # a direct match already had its chance (and its probability roll) above
            reason = scan.fires(c, scan.n, extra=text)
            if reason and (c.entry.probability >= 100 or _roll(f"{c.seed}\x00{scan.n}") < c.entry.probability):
                active[c] = (f"{reason} in another entry", False)
                new.append(c)


def _inclusion_groups(active: dict[_Candidate, tuple[str, bool]]) -> None:
    """One entry per inclusion group: those that stay win, else the override with the highest order, else a
    weighted pick seeded by who is competing (the same contest always has the same winner)."""
    groups: dict[str, list[_Candidate]] = {}
    for c in active:
        for name in filter(None, (g.strip() for g in c.entry.group.split(","))):
            groups.setdefault(name, []).append(c)
    for name in sorted(groups):
        members = [c for c in groups[name] if c in active]
        if len(members) <= 1:
            continue
        stayers = [c for c in members if active[c][1]]
        if stayers:
            keep = stayers
        else:
            overrides = sorted((c for c in members if c.entry.group_override), key=lambda c: -c.entry.order)
            if overrides:
                keep = overrides[:1]
            else:
                total = sum(c.entry.group_weight for c in members) or 1
                roll = _roll(name + "\x00" + "\x00".join(sorted(c.seed for c in members))) / 100 * total
                keep, running = members[-1:], 0
                for c in members:
                    running += c.entry.group_weight
                    if roll < running:
                        keep = [c]
                        break
        for c in members:
            if c not in keep:
                del active[c]


def _fit_budget(active: dict[_Candidate, tuple[str, bool]], budget: int, count_tokens: Callable[[str], int],
                macros: Callable[[str], str]) -> LoreActivation:
    """Fill the budget in SillyTavern's priority order and stop at the first entry that does not fit."""
    result = LoreActivation(budget=budget)
    order = sorted(active, key=lambda c: (not active[c][1], c.book_index, -c.entry.order, c.index))
    used, full = 0, False
    book_used: dict[int, int] = {}
    books_full: set[int] = set()
    kept: list[tuple[_Candidate, ActiveEntry]] = []
    for c in order:
        content = macros(c.entry.content).strip()
        if not content:
            continue
        item = ActiveEntry(c.book.name, c.entry, content, active[c][0], count_tokens(content) + 1)
        cap, spent = c.book.token_budget, book_used.get(c.book_index, 0)
        if c.entry.ignore_budget:
            kept.append((c, item))
            continue
        if full or used + item.tokens > budget:
            full = True  # SillyTavern stops at the first entry over the budget
        elif c.book_index in books_full or (cap and spent + item.tokens > cap):
            books_full.add(c.book_index)  # this lorebook's own token_budget is spent
        else:
            used += item.tokens
            book_used[c.book_index] = spent + item.tokens
            kept.append((c, item))
            continue
        result.cut.append(item)
    kept.sort(key=lambda pair: (pair[0].entry.order, pair[0].book_index, pair[0].index))
    result.entries = [item for _, item in kept]
    return result
