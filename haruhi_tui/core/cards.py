"""Character cards to and from character folders.

Importing a card (V1, V2 or V3; JSON, PNG or CHARX: :mod:`~haruhi_tui.core.card_format`) writes a folder the
rest of the program reads like any other character:

* ``system_prompt.txt``: the role prompt, built the way SillyTavern builds the story: the card's
  ``system_prompt`` (in place of the main prompt), then ``description``, ``personality`` and ``scenario``;
* ``texts/*.txt``: the ``mes_example`` dialogues as classic scenes (``{{user}}:「…」`` and the character's
  lines under its speaking name);
* ``character.json``: the speaking name, nickname, greetings (``first_mes`` then ``alternate_greetings``),
  group-only greetings, post-history instructions, depth prompt, creator notes, tags, where it came from;
* ``lorebook.json`` (the card's ``character_book``, SillyTavern world-info shape: :mod:`.card_book`),
  ``avatar.png`` (the card's picture or main icon) and ``source_card.json`` (the card's own fields, so an
  export gives back what was imported).

``{{user}}`` and ``{{char}}`` (also written ``<USER>``, ``<BOT>``) stay macros, normalised to ``{{user}}`` and
``{{char}}`` in every text field, for the persona builder to resolve when it builds a prompt.

Exporting writes Character Card V3 (JSON, or a PNG carrying a V2 ``chara`` and a V3 ``ccv3`` chunk as
SillyTavern does) with every scene under ``extensions.haruhi_tui``, so a round trip loses nothing.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import re
import shutil
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from .card_book import book_to_world_info, world_info_to_book
from .card_format import (
    SPEC_V2,
    SPEC_V3,
    V2_CHUNK,
    V3_CHUNK,
    embed_cards,
    png_chunks,
    read_card_file,
    validate_card,
)
from .card_portrait import portrait_png
from .character_manifest import (
    LOREBOOK_FILE,
    CharacterManifest,
    DepthPrompt,
    Source,
    parse_manifest,
    write_manifest,
)
from .characters import Character, Scene, load_character
from .errors import HaruhiError
from .fsutil import atomic_open, read_json, remove_stale_temps, temp_dir, write_text

EXAMPLE_SCENES = 3
#: A folder name made from a card's name is cut to this (file systems allow 255 bytes; UTF-8 takes up to 4).
MAX_FOLDER_CHARS = 60
EXTENSION = "haruhi_tui"
AVATAR_FILE = "avatar.png"
SOURCE_CARD_FILE = "source_card.json"
OUR_TAG = "haruhi-tui"
_STAGING = "card-import"  # the staging folder: .card-import.<pid>.<random>.tmp
_SAFE = re.compile(r"[^\w\-\u4e00-\u9fff]+")
_USER = re.compile(r"\{\{\s*user\s*\}\}|<user>", re.IGNORECASE)
_CHAR = re.compile(r"\{\{\s*char\s*\}\}|<bot>|<char>", re.IGNORECASE)
_EXAMPLE_LINE = re.compile(r"^(\{\{user\}\}|\{\{char\}\})\s*[:：]\s*(.*)$")
_PROMPT_FIELDS = ("system_prompt", "description", "personality", "scenario")
#: Source-card fields an export writes afresh, or never shares (SillyTavern's private chat/avatar fields).
_NOT_EXPORTED = ("nickname", "character_book", "assets", "chat", "avatar", "json_data", "fav")
CHARX_ICON = "assets/icon/images/main.png"


def read_card(path: str | Path) -> dict[str, Any]:
    """The card's fields (its ``data``) from JSON, PNG or CHARX; a bad card is a HaruhiError that says why."""
    return read_card_file(path).data


# -- card -> folder -----------------------------------------------------------------------------------
def _ours(data: dict[str, Any]) -> dict[str, Any]:
    """What our own export put under ``extensions.haruhi_tui`` (scenes, folder, speaker, manifest)."""
    ours = (data.get("extensions") or {}).get(EXTENSION)
    return ours if isinstance(ours, dict) else {}


def card_macros(text: str | None) -> str:
    """``text`` with ``<USER>``/``{{User}}``/``<BOT>``/``<char>``... written as ``{{user}}`` and ``{{char}}``."""
    return _CHAR.sub("{{char}}", _USER.sub("{{user}}", text or ""))


def role_prompt_from_card(data: dict[str, Any]) -> str:
    """The role prompt as SillyTavern assembles it: the card's system prompt (``{{original}}``, the main prompt
    it may include, is ours to leave out), description, ``{{char}}'s personality: …``, ``Scenario: …``."""
    system = card_macros(data.get("system_prompt")).replace("{{original}}", "").strip()
    personality = card_macros(data.get("personality")).strip()
    scenario = card_macros(data.get("scenario")).strip()
    parts = [system, card_macros(data.get("description")).strip(),
             f"{{{{char}}}}'s personality: {personality}" if personality else "",
             f"Scenario: {scenario}" if scenario else ""]
    kept: list[str] = []
    for part in parts:
        if part and part not in kept:  # cards that copy the description into system_prompt say it once
            kept.append(part)
    return "\n\n".join(kept)


def scenes_from_examples(mes_example: str | None, name: str) -> list[str]:
    """``mes_example`` dialogues (``<START>`` blocks) as scene texts: ``{{user}}:「…」``, ``name:「…」``, and
    ``:…`` for narration before anyone speaks; a line without a speaker continues the message above it."""
    scenes = []
    for block in re.split(r"<START>", card_macros(mes_example), flags=re.IGNORECASE):
        lines: list[list[Any]] = []
        for raw in block.splitlines():
            raw = raw.strip()
            if not raw:
                continue
            match = _EXAMPLE_LINE.match(raw)
            if match:
                lines.append(["{{user}}" if match.group(1) == "{{user}}" else name, match.group(2).strip()])
            elif lines and lines[-1][0] is not None:
                lines[-1][1] = f"{lines[-1][1]} {raw}".strip()
            else:
                lines.append([None, raw.strip("*").strip()])
        text = "\n".join(f":{t}" if s is None else f"{s}:「{t}」" for s, t in lines if t)
        if text:
            scenes.append(text)
    return scenes


def _depth_prompt(data: dict[str, Any]) -> DepthPrompt:
    raw = (data.get("extensions") or {}).get("depth_prompt")
    if not isinstance(raw, dict) or not str(raw.get("prompt") or "").strip():
        return DepthPrompt()
    try:
        depth = max(0, int(float(raw.get("depth", 4))))
    except (TypeError, ValueError):
        depth = 4
    role = raw.get("role") if raw.get("role") in ("system", "user", "assistant") else "system"
    return DepthPrompt(card_macros(str(raw["prompt"])), depth, role)


def _creator_notes(data: dict[str, Any]) -> str:
    notes = data.get("creator_notes") or ""
    multilingual = data.get("creator_notes_multilingual")
    if not notes and isinstance(multilingual, dict) and multilingual:
        notes = multilingual.get("en") or next(iter(multilingual.values()))
    return str(notes or "")


def manifest_from_card(data: dict[str, Any], speaker: str, where: str) -> CharacterManifest:
    """``character.json`` for a card: what the card says, plus what our own export kept of the manifest."""
    ours = _ours(data)
    kept = ours.get("manifest")
    base = parse_manifest(kept, Path(where)) if isinstance(kept, dict) else CharacterManifest()
    greetings = [card_macros(g) for g in [data.get("first_mes") or "", *(data.get("alternate_greetings") or [])]]
    urls = [s for s in data.get("source") or [] if isinstance(s, str) and s.startswith(("http://", "https://"))]
    source = base.source if base.source.kind != "local" else Source(
        "card", urls[0] if urls else "", "", str(data.get("creator") or ""))
    return CharacterManifest(
        name=speaker, display_name=base.display_name, nickname=str(data.get("nickname") or ""), work=base.work,
        source=source, greetings=tuple(g for g in greetings if g.strip()),
        group_greetings=tuple(card_macros(g) for g in data.get("group_only_greetings") or [] if g.strip()),
        user_name=base.user_name, user_description=base.user_description,
        post_history_instructions=card_macros(data.get("post_history_instructions")),
        depth_prompt=_depth_prompt(data), creator_notes=_creator_notes(data),
        tags=tuple(t for t in data.get("tags") or [] if t != OUR_TAG),
    )


def _scene_files(data: dict[str, Any], name: str) -> list[tuple[str, str]]:
    """(file stem, text) of each scene: our export's scenes as they were, else the card's examples."""
    kept = _ours(data).get("scenes")
    raw = [(str(s.get("id") or f"scene_{i}"), str(s.get("text") or ""))
           for i, s in enumerate(kept if isinstance(kept, list) else []) if isinstance(s, dict)]
    if not raw:  # not our export, or its scenes are not what it writes
        raw = [(f"card_{i:03d}", t) for i, t in enumerate(scenes_from_examples(data.get("mes_example"), name))]
    files: list[tuple[str, str]] = []
    used: set[str] = set()
    for stem, text in raw:
        safe = _SAFE.sub("_", Path(stem).stem).strip("_") or "scene"
        unique, n = safe, 1
        while unique.casefold() in used:
            n += 1
            unique = f"{safe}_{n}"
        used.add(unique.casefold())
        files.append((unique, text))
    return files


def _claim_folder(staging: Path, root: Path, base: str, reserved: Iterable[str]) -> Path:
    """Move ``staging`` to the first free name of ``base``, ``base_card``, ``base_card2``…"""
    taken = {r.casefold() for r in reserved}
    n = 0
    while True:
        n += 1
        name = base if n == 1 else f"{base}_card" if n == 2 else f"{base}_card{n - 1}"
        target = root / name
        if name.casefold() in taken or target.exists():
            continue
        try:
            os.rename(staging, target)
            return target
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue  # another import took it a moment ago
            raise HaruhiError(f"cannot create {target}: {exc.strerror or exc}") from exc


def import_card(path: str | Path, characters_dir: str | Path, *, reserved: Iterable[str] = ()) -> Character:
    """Turn a card into a new character folder under ``characters_dir`` and load it back.

    The folder is named after the card (``Mira``); when that is taken on disk or in ``reserved`` (folders
    of characters configured elsewhere), ``Mira_card``, ``Mira_card2``… It is written whole in a hidden
    staging folder and renamed into place, so a failed import leaves nothing behind.
    """
    card = read_card_file(path)
    data, where = card.data, Path(path).name
    name = data["name"].strip()
    ours = _ours(data)
    kept_speaker = ours.get("speaker")
    speaker = kept_speaker.strip() if isinstance(kept_speaker, str) and kept_speaker.strip() else name
    manifest = manifest_from_card(data, speaker, where)
    warnings = list(card.warnings)
    world = None
    book = data.get("character_book")
    if isinstance(book, dict) and book.get("entries"):
        world, book_warnings = book_to_world_info(book, where)
        warnings += book_warnings
    root = Path(characters_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(root / _STAGING)  # left by an import that was killed midway
        staging = temp_dir(root / _STAGING)
    except OSError as exc:
        raise HaruhiError(f"cannot write to {root}: {exc.strerror or exc}") from exc
    # Files in the staging folder are written plainly: nobody sees them before the folder is renamed into
    # place, and a file-by-file fsync made importing a character with 170 scenes take seconds.
    try:
        (staging / "texts").mkdir()
        (staging / "system_prompt.txt").write_text(role_prompt_from_card(data) + "\n", encoding="utf-8")
        for stem, text in _scene_files(data, speaker):
            (staging / "texts" / f"{stem}.txt").write_text(text.strip() + "\n", encoding="utf-8")
        write_manifest(staging, manifest)
        if world is not None:
            (staging / LOREBOOK_FILE).write_text(json.dumps(world, ensure_ascii=False, indent=2), encoding="utf-8")
        if card.image is not None:
            (staging / AVATAR_FILE).write_bytes(card.image)
        kept = {k: v for k, v in data.items() if k not in ("character_book", "assets")}
        kept["extensions"] = {k: v for k, v in (data.get("extensions") or {}).items() if k != EXTENSION}
        (staging / SOURCE_CARD_FILE).write_text(json.dumps(kept, ensure_ascii=False, indent=2), encoding="utf-8")
        base = _SAFE.sub("_", str(ours.get("folder") or name)).strip("_")[:MAX_FOLDER_CHARS] or "character"
        folder = _claim_folder(staging, root, base, reserved)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise HaruhiError(f"cannot write the character into {root}: {exc.strerror or exc}") from exc
        raise
    character = load_character(folder)
    character.warnings.extend(warnings)
    return character


# -- folder -> card -----------------------------------------------------------------------------------
def _source_card(folder: Path | None) -> dict[str, Any]:
    """The fields of the card the character was imported from (empty for other characters)."""
    path = folder / SOURCE_CARD_FILE if folder else None
    if path is None or not path.is_file():
        return {}
    data, _spec = validate_card(read_json(path, "source card"), str(path))  # hand-edited: the card's own checks
    return data


def _prompt_fields(character: Character, source: dict[str, Any]) -> dict[str, str]:
    """The card's prompt fields: the imported card's own while the role prompt is still what they make,
    else the role prompt as the description (a card's system_prompt replaces the user's main prompt)."""
    if source and role_prompt_from_card(source) == character.role_prompt.strip():
        return {k: str(source.get(k) or "") for k in _PROMPT_FIELDS}
    return {"system_prompt": "", "description": character.role_prompt, "personality": "", "scenario": ""}


def example_dialogues(character: Character, scenes: list[Scene]) -> str:
    """``mes_example``: one ``<START>`` block per scene, ``{{user}}: …`` / ``{{char}}: …`` lines (others by name,
    narration in asterisks)."""
    users = {"{{user}}", character.interlocutor}
    blocks = []
    for scene in scenes:
        lines = []
        for line in scene.lines:
            if line.speaker is None:
                lines.append(f"*{line.text}*")
            elif line.speaker == character.name:
                lines.append(f"{{{{char}}}}: {line.text}")
            elif line.speaker in users:
                lines.append(f"{{{{user}}}}: {line.text}")
            else:
                lines.append(f"{line.speaker}: {line.text}")
        blocks.append("<START>\n" + "\n".join(lines))
    return "\n".join(blocks)


def _scene_lines(scene: Scene) -> list[str]:
    return [f":{line.text}" if line.speaker is None else f"{line.speaker}:「{line.text}」" for line in scene.lines]


def _creator_notes_for(character: Character) -> str:
    m = character.manifest
    if m.creator_notes:
        return m.creator_notes
    notes = f"Exported by haruhi-tui from the character folder '{character.folder}'."
    origin = ", ".join(p for p in (m.source.attribution, m.source.url, m.source.licence) if p)
    return f"{notes} Source: {origin}." if origin else notes


def character_to_card(character: Character, folder: str | Path | None = None) -> dict[str, Any]:
    """A Character Card V3 for ``character``, with its lorebook and what the card it was imported from said
    (read from ``folder``, default: the folder it was loaded from)."""
    where = Path(folder) if folder else character.path
    source = _source_card(where)
    m = character.manifest
    greetings = list(m.greetings) or ([character.first_line] if character.first_line else [])
    scenes = character.scenes if source else character.scenes[:EXAMPLE_SCENES]
    extensions = copy.deepcopy(source.get("extensions") or {})
    extensions.pop("depth_prompt", None)
    if m.depth_prompt.prompt:
        extensions["depth_prompt"] = asdict(m.depth_prompt)
    extensions[EXTENSION] = {
        "folder": character.folder,
        "speaker": character.name,
        "scenes": [{"id": s.scene_id.split("/", 1)[-1], "text": "\n".join(_scene_lines(s))} for s in character.scenes],
        "manifest": m.to_json(),
    }
    data: dict[str, Any] = {k: v for k, v in source.items() if k not in _NOT_EXPORTED}
    data.update(_prompt_fields(character, source))
    data.update({
        "name": character.name,
        "first_mes": greetings[0] if greetings else "",
        "mes_example": example_dialogues(character, scenes),
        "creator_notes": _creator_notes_for(character),
        "post_history_instructions": m.post_history_instructions,
        "alternate_greetings": greetings[1:],
        "group_only_greetings": list(m.group_greetings),
        "tags": list(m.tags) or [OUR_TAG],
        "creator": str(source.get("creator") or m.source.attribution),
        "character_version": str(source.get("character_version") or ""),
        "extensions": extensions,
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        "modification_date": int(time.time()),
    })
    if m.nickname:
        data["nickname"] = m.nickname
    if m.source.url and not data.get("source"):
        data["source"] = [m.source.url]
    lorebook = where / LOREBOOK_FILE if where else None
    if lorebook is not None and lorebook.is_file():
        data["character_book"] = world_info_to_book(read_json(lorebook, "lorebook"), f"{character.name}'s lorebook",
                                                    str(lorebook))
    legacy = {k: data[k] for k in ("name", "description", "personality", "scenario", "first_mes", "mes_example")}
    return {"spec": SPEC_V3, "spec_version": "3.0", **legacy, "data": data}


def as_v2(card: dict[str, Any]) -> dict[str, Any]:
    """The same card declared as V2 (what SillyTavern writes in the ``chara`` chunk beside ``ccv3``)."""
    return {**copy.deepcopy(card), "spec": SPEC_V2, "spec_version": "2.0"}


def card_picture(character: Character, folder: str | Path | None = None) -> bytes:
    """The picture a card carries: the character's ``avatar.png``, else a portrait drawn for it."""
    where = Path(folder) if folder else character.path
    avatar = where / AVATAR_FILE if where else None
    if avatar is not None and avatar.is_file():
        with contextlib.suppress(OSError, ValueError):
            image = avatar.read_bytes()
            png_chunks(image)
            return image
    return portrait_png(character.name, character.folder)


def export_card(character: Character, path: str | Path, *, folder: str | Path | None = None,
                version: int = 3) -> Path:
    """Write ``character`` as a card: ``.png`` (its picture carrying a V2 ``chara`` and, for version 3, a V3
    ``ccv3`` chunk), ``.charx`` (V3 zip) or ``.json`` (V3, or V2 with ``version=2``). Its avatar, lorebook
    and source card are read from ``folder`` (default: the folder the character was loaded from)."""
    target = Path(path)
    card = character_to_card(character, folder)
    suffix = target.suffix.lower()
    if suffix == ".png":
        cards = {V2_CHUNK: as_v2(card), V3_CHUNK: card} if version >= 3 else {V2_CHUNK: as_v2(card)}
        payload = embed_cards(card_picture(character, folder), cards)
        with atomic_open(target, "wb") as fh:
            fh.write(payload)
    elif suffix == ".charx":  # always V3: a zip with card.json and the picture as its main icon
        card["data"]["assets"] = [{"type": "icon", "uri": f"embeded://{CHARX_ICON}", "name": "main", "ext": "png"}]
        with atomic_open(target, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("card.json", json.dumps(card, ensure_ascii=False, indent=2))
            archive.writestr(CHARX_ICON, card_picture(character, folder))
    else:
        write_text(target, json.dumps(card if version >= 3 else as_v2(card), ensure_ascii=False, indent=2) + "\n")
    return target
