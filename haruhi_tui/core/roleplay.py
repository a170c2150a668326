"""What a chat adds to a character's prompt beyond the character: who the user plays, and an author's note.

Both follow SillyTavern, whose users carry them over: a *persona* is a name and a description of the user
(its description goes into the system prompt, its name is ``{{user}}``); the *author's note* is per-chat
text inserted a few messages from the end (``depth``, 4 by default, like SillyTavern), so it weighs on the
next reply without moving the stable start of the prompt. :func:`substitute_macros` resolves the macros
cards and lorebooks are written with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation: characters.py imports this package's lorebook module
    from .characters import Character

DEFAULT_NOTE_DEPTH = 4  # SillyTavern's default author's note depth
MAX_NOTE_DEPTH = 1000   # SillyTavern's largest scan depth; a deeper note sits before the whole history

_MACRO = re.compile(r"\{\{\s*(user|char|persona|charifnotgroup)\s*\}\}|<(user|bot|char)>", re.IGNORECASE)


@dataclass(frozen=True)
class UserPersona:
    """Who the user plays in a chat: the name their lines carry (``{{user}}``) and an optional description."""

    name: str
    description: str = ""

    @classmethod
    def default_for(cls, character: "Character") -> "UserPersona":
        """The character's usual interlocutor (阿虚 for 春日): character.json's ``user_name`` and
        ``user_description`` where it says so, else whoever talks to the character most in its scenes."""
        return cls(character.interlocutor, character.manifest.user_description.strip())


@dataclass(frozen=True)
class AuthorsNote:
    """A chat's author's note: ``text`` inserted ``depth`` messages from the end (0: after the last one)."""

    text: str = ""
    depth: int = DEFAULT_NOTE_DEPTH


def check_depth(depth: object) -> int:
    """A depth as a whole number in 0..1000, or a ValueError that says so."""
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= MAX_NOTE_DEPTH:
        raise ValueError(f"the depth is a whole number from 0 to {MAX_NOTE_DEPTH}, not {depth!r}")
    return depth


def substitute_macros(text: str, *, user: str, char: str, persona: str = "") -> str:
    """Resolve SillyTavern's name macros, case-insensitively: ``{{user}}``/``<USER>`` to the persona's
    name, ``{{char}}``/``<BOT>``/``<CHAR>`` to the character's, ``{{persona}}`` to the persona's
    description. Other macros are left as written."""
    if "{" not in text and "<" not in text:
        return text

    def value(match: re.Match) -> str:
        name = (match.group(1) or match.group(2)).lower()
        return user if name == "user" else persona if name == "persona" else char

    return _MACRO.sub(value, text)
