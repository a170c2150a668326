"""How a new chat opens: the character speaks first.

The greetings are ``character.json``'s ``greetings`` (written for the purpose; a card's ``first_mes`` and
``alternate_greetings`` land there), the first being the default. A plain ChatHaruhi folder has none, so
the chat opens with a line of theirs that opens one of their classic scenes, preferably one said to the
partner the user plays by default, marked as coming from a scene. The greeting is stored as the chat's
first assistant message (:func:`store_greeting`, called by ``ChatSession.start``), so the model sees it as
part of the history; the alternatives are stored as its siblings and switched like the versions of a reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Literal

from haruhi_tui.core.characters import Character
from haruhi_tui.store import Store, StoreError

GreetingKind = Literal["greeting", "scene"]
#: How many scene openings a ChatHaruhi character offers to switch between.
MAX_SCENE_OPENINGS = 3
#: Shorter lines say too little to open a chat, longer ones are speeches.
OPENING_CHARS = (6, 80)
_MACRO = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(BOT|USER)>", re.IGNORECASE)


@dataclass(frozen=True)
class Greeting:
    text: str
    kind: GreetingKind
    scene_id: str = ""  # for a scene opening: the scene it comes from

    def stats(self) -> dict[str, Any]:
        """What the stored message keeps about where it came from (the app shows it)."""
        out: dict[str, Any] = {"greeting": self.kind}
        if self.scene_id:
            out["scene"] = self.scene_id
        return out


def fill_macros(text: str, character: str, user: str) -> str:
    """``{{char}}``/``{{user}}`` (and the older ``<BOT>``/``<USER>``) as the names of this chat."""
    return _MACRO.sub(lambda m: character if (m.group(1) or m.group(2)).lower() in ("char", "bot") else user, text)


def scene_openings(character: Character, limit: int = MAX_SCENE_OPENINGS) -> list[Greeting]:
    """Lines with which the character opens a classic scene (nobody spoke before them); those followed by the
    user's default partner first, then in scene order. Deterministic, so a new chat opens the same way."""
    low, high = OPENING_CHARS
    to_partner: list[Greeting] = []
    others: list[Greeting] = []
    for scene in character.scenes:
        spoken = [line for line in scene.lines if line.speaker]
        if not spoken or spoken[0].speaker != character.name or not low <= len(spoken[0].text) <= high:
            continue
        opening = Greeting(spoken[0].text, "scene", scene.scene_id)
        answered_by = spoken[1].speaker if len(spoken) > 1 else None
        (to_partner if answered_by == character.interlocutor else others).append(opening)
    chosen = (to_partner + others)[:limit]
    if not chosen and character.first_line:
        first = next(s.scene_id for s in character.scenes for line in s.lines
                     if line.speaker == character.name and line.text == character.first_line)
        chosen = [Greeting(character.first_line, "scene", first)]
    return chosen


def greetings_for(character: Character, user_name: str = "") -> list[Greeting]:
    """The chat's possible openings, the default first: character.json's greetings, else scene openings."""
    user = user_name or character.interlocutor
    written = [fill_macros(g, character.name, user).strip() for g in character.manifest.greetings]
    written = [g for g in written if g]
    if written:
        return [Greeting(g, "greeting") for g in written]
    return scene_openings(character)


def store_greeting(store: Store, chat_id: int, character: Character, user_name: str = "",
                   on_error: Callable[[str], None] | None = None) -> int | None:
    """Store the chat's openings as its first message: the default one (made the chat's leaf, returned) and the
    others as its siblings. A database that refuses is reported and the chat starts without a greeting."""
    greetings = greetings_for(character, user_name)
    if not greetings:
        return None
    try:
        first = store.add_message(chat_id, None, "assistant", greetings[0].text, stats=greetings[0].stats())
        for other in greetings[1:]:
            store.add_message(chat_id, None, "assistant", other.text, stats=other.stats(), make_leaf=False)
    except StoreError as exc:
        if on_error is not None:
            on_error(f"{exc} (the chat starts without the character's greeting)")
        return None
    return first.id


def greeting_caption(stats: dict[str, Any] | None, version: int = 1, count: int = 1) -> str:
    """The note under a greeting: where it comes from and how to see the others ("" for other messages)."""
    kind = (stats or {}).get("greeting")
    if not kind:
        return ""
    text = "from a classic scene" if kind == "scene" else "greeting"
    if count > 1:
        text += f" · {version} of {count} (alt+←/→ for another)"
    return text
