"""Train/val split by groups of scenes that share dialogue, and the measure of what the splits share.

ChatHaruhi's scene files overlap: the same dialogue is excerpted in several files (only a few are exact
copies), so a split by file puts one exchange in both splits. Scenes that share a line are one group
(union-find per character over normalised lines of useful length, and over the character's replies);
groups, not files, are shuffled into the splits, so no dialogue is in both.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

from .characters import Character, Scene
from .persona import Turn
from .sharegpt import Sample

#: Replies at least this long (characters) are what the overlap is measured on and always keep scenes together.
MIN_SHARED_CHARS = 12
#: Other lines link scenes at this many letters/digits after normalising; twice as many for ASCII-only text
#: (English words are longer: "What's going on?" is too common to mean the same dialogue).
MIN_LINE_KEY_CHARS = 12

_NOT_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Text without case, width, spacing or punctuation differences: the key two copies of a line share."""
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", text)).casefold()


def _line_key(text: str) -> str | None:
    key = normalise(text)
    return key if len(key) >= MIN_LINE_KEY_CHARS * (2 if key.isascii() else 1) else None


def scene_keys(scene: Scene, turns: Sequence[Turn]) -> set[str]:
    """What marks a scene's dialogue: its spoken lines of useful length and the character's long replies."""
    keys = {key for line in scene.lines if line.speaker and (key := _line_key(line.text))}
    for turn in turns:
        text = turn.text.strip()
        if turn.role == "assistant" and len(text) >= MIN_SHARED_CHARS:
            keys.add("reply:" + (normalise(text) or text))
    return keys


def overlap_groups(scenes: Sequence[Scene], turns: Sequence[Sequence[Turn]]) -> list[list[int]]:
    """Indices of ``scenes`` grouped so that scenes sharing a key (see :func:`scene_keys`) are together.

    Groups are ordered by their first scene and hold their scenes in order, whatever the hash seed.
    """
    parent = list(range(len(scenes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, scene in enumerate(scenes):
        for key in sorted(scene_keys(scene, turns[i])):
            if key in owner:
                a, b = root(i), root(owner[key])
                parent[max(a, b)] = min(a, b)
            else:
                owner[key] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(scenes)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


@dataclass(frozen=True)
class SceneSplit:
    """One character's split: scene indices per side, and what the grouping did to the requested share."""

    train: list[int]
    val: list[int]
    groups: list[list[int]]
    val_target: int


def split_groups(character: Character, groups: list[list[int]], seed: int, val_fraction: float) -> SceneSplit:
    """Deterministic split for a seed: shuffled groups go to validation while they fit its share of scenes.

    The share is ``round(scenes * val_fraction)`` (at least one scene when there are two or more), as a
    split by file had it; a group that would overshoot is passed over for the next, so the share drifts
    only when no remaining group fits (then the smallest group is taken rather than none).
    """
    n = len(character.scenes)
    target = round(n * val_fraction)
    if val_fraction > 0 and target == 0 and n >= 2:
        target = 1
    order = list(groups)
    random.Random(f"{seed}:{character.folder}").shuffle(order)
    val: list[int] = []
    for group in order:
        if len(val) + len(group) <= target:
            val += group
    if target and not val and len(groups) >= 2:
        val = list(min(order, key=len))
    chosen = set(val)
    return SceneSplit([i for i in range(n) if i not in chosen], sorted(chosen), groups, target)


@dataclass
class Overlap:
    """Validation replies (at least ``MIN_SHARED_CHARS`` long) that also occur in training, as a training target
    of the same character (``replies``) or with the same user turn too (``exchanges``)."""

    checked: int = 0
    replies: int = 0
    exchanges: int = 0

    @property
    def percent(self) -> float:
        return round(100 * self.replies / self.checked, 2) if self.checked else 0.0

    def report(self) -> dict:
        return {"min_reply_chars": MIN_SHARED_CHARS, "val_replies": self.checked, "in_train": self.replies,
                "percent": self.percent, "same_exchange_in_train": self.exchanges}


def measure_overlap(train: Iterable[Sample], val: Iterable[Sample]) -> dict[str | None, Overlap]:
    """Per character (and ``None`` for all), how many validation targets occur as training targets."""
    replies: set[tuple[str | None, str]] = set()
    exchanges: set[tuple[str | None, str, str]] = set()
    for sample in train:
        chat = [m for m in sample.messages if m["role"] != "system"]
        for prev, message in zip(chat, chat[1:]):
            if message["role"] == "assistant":
                replies.add((sample.character, message["content"]))
                exchanges.add((sample.character, prev["content"], message["content"]))
    result: dict[str | None, Overlap] = {None: Overlap()}
    for sample in val:
        target = sample.target
        if len(target.strip()) < MIN_SHARED_CHARS or len(sample.messages) < 2:
            continue
        user = sample.messages[-2]["content"]
        for overlap in (result[None], result.setdefault(sample.character, Overlap())):
            overlap.checked += 1
            overlap.replies += (sample.character, target) in replies
            overlap.exchanges += (sample.character, user, target) in exchanges
    return result
