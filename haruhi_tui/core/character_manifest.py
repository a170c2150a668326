"""``character.json``: what a character folder says about itself beyond ChatHaruhi's two parts.

A ChatHaruhi folder is ``system_prompt.txt`` + ``texts/*.txt``. Characters that come from elsewhere (a
Character Card, the ChatHaruhi or RoleLLM hub datasets, the starter set shipped with the package) carry
what those sources know in an optional ``character.json`` beside them: the speaking name, where the
character comes from and under which licence, greetings, the user persona they expect, instructions to
insert near the end of the prompt. Every field is optional; a folder without the file is read as before.
A world-info lorebook, when a character has one, is ``lorebook.json`` in SillyTavern's format beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import HaruhiError
from .fsutil import read_json, write_json

MANIFEST_FILE = "character.json"
LOREBOOK_FILE = "lorebook.json"


@dataclass(frozen=True)
class Source:
    """Where a character comes from: ``kind`` is chatharuhi, rolellm, card or local."""

    kind: str = "local"
    url: str = ""
    licence: str = ""
    attribution: str = ""


@dataclass(frozen=True)
class DepthPrompt:
    """Text inserted ``depth`` turns from the end of the conversation (a card's depth prompt)."""

    prompt: str = ""
    depth: int = 4
    role: str = "system"


@dataclass(frozen=True)
class CharacterManifest:
    name: str = ""                  # the speaking name ("春日"); empty: detected from the scenes
    display_name: str = ""          # how lists show them ("凉宫春日"); empty: the speaking name
    nickname: str = ""              # what others call them in a scene (Card V3 nickname)
    work: str = ""                  # the work they come from; empty: guessed from the role prompt
    source: Source = field(default_factory=Source)
    greetings: tuple[str, ...] = ()        # opening messages, the first is the default
    group_greetings: tuple[str, ...] = ()  # openings used only in group chats
    user_name: str = ""             # who the user plays by default (阿虚 for 春日)
    user_description: str = ""
    post_history_instructions: str = ""
    depth_prompt: DepthPrompt = field(default_factory=DepthPrompt)
    creator_notes: str = ""
    tags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Only the fields that are set, so files stay short and readable."""
        default = CharacterManifest()
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                out[f.name] = asdict(value) if f.name in ("source", "depth_prompt") else (
                    list(value) if isinstance(value, tuple) else value)
        return out


def _text(data: dict, key: str, where: Path) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise HaruhiError(f"{where}: '{key}' must be text")
    return value


def _texts(data: dict, key: str, where: Path) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HaruhiError(f"{where}: '{key}' must be a list of texts")
    return tuple(value)


def _object(data: dict, key: str, where: Path) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise HaruhiError(f"{where}: '{key}' must be an object")
    return value


def parse_manifest(data: Any, where: Path) -> CharacterManifest:
    """A manifest from parsed JSON; a wrong type is a one-line error naming the file and the field."""
    if not isinstance(data, dict):
        raise HaruhiError(f"{where}: expected a JSON object")
    source = _object(data, "source", where)
    depth = _object(data, "depth_prompt", where)
    depth_value = depth.get("depth", 4)
    if not isinstance(depth_value, int) or isinstance(depth_value, bool) or depth_value < 0:
        raise HaruhiError(f"{where}: 'depth_prompt.depth' must be a whole number >= 0")
    return CharacterManifest(
        name=_text(data, "name", where),
        display_name=_text(data, "display_name", where),
        nickname=_text(data, "nickname", where),
        work=_text(data, "work", where),
        source=Source(**{k: _text(source, k, where) for k in ("kind", "url", "licence", "attribution")
                         if k in source}),
        greetings=_texts(data, "greetings", where),
        group_greetings=_texts(data, "group_greetings", where),
        user_name=_text(data, "user_name", where),
        user_description=_text(data, "user_description", where),
        post_history_instructions=_text(data, "post_history_instructions", where),
        depth_prompt=DepthPrompt(prompt=_text(depth, "prompt", where), depth=depth_value,
                                 role=_text(depth, "role", where) or "system"),
        creator_notes=_text(data, "creator_notes", where),
        tags=_texts(data, "tags", where),
    )


def read_manifest(folder: str | Path) -> CharacterManifest:
    """The folder's ``character.json``, or an empty manifest when there is none."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return CharacterManifest()
    data = read_json(path, "character manifest")
    return parse_manifest(data, path)


def write_manifest(folder: str | Path, manifest: CharacterManifest) -> Path:
    path = Path(folder) / MANIFEST_FILE
    write_json(path, manifest.to_json())
    return path
