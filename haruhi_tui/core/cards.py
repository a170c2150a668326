"""Character Card V2 (the community's JSON, and PNG with the card embedded) to and from our characters.

A card becomes a ChatHaruhi-style folder (``system_prompt.txt`` + ``texts/*.txt``) in the app's
characters folder, so every other part (persona builder, dataset builder) treats it like any other
character. Exporting writes the role prompt as the card's description/system prompt, a few classic
scenes as ``mes_example``, and every scene under ``extensions.haruhi_tui`` so a round trip loses nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any

from .characters import Character, Scene, format_line, load_character
from .errors import HaruhiError
from .fsutil import atomic_open, write_text

SPEC, SPEC_VERSION = "chara_card_v2", "2.0"
PNG_KEYWORD = "chara"
MAX_CARD_BYTES = 8 * 1024 * 1024  # a card is text; anything larger is not one
MAX_PNG_BYTES = 32 * 1024 * 1024
EXAMPLE_SCENES = 3
EXTENSION = "haruhi_tui"
_SAFE = re.compile(r"[^\w\-\u4e00-\u9fff]+")


def character_to_card(character: Character) -> dict[str, Any]:
    """A Character Card V2 dict for ``character``."""
    examples = []
    for scene in character.scenes[:EXAMPLE_SCENES]:
        lines = []
        for line in scene.lines:
            if line.speaker == character.name:
                lines.append(f"{{{{char}}}}: {line.text}")
            elif line.speaker is None:
                lines.append(f"*{line.text}*")
            else:
                lines.append(f"{{{{user}}}}: {format_line(line)}")
        examples.append("<START>\n" + "\n".join(lines))
    return {
        "spec": SPEC,
        "spec_version": SPEC_VERSION,
        "data": {
            "name": character.name,
            "description": character.role_prompt,
            "personality": "",
            "scenario": character.source_work,
            "first_mes": character.first_line,
            "mes_example": "\n".join(examples),
            "creator_notes": f"Exported by haruhi-tui from the ChatHaruhi folder '{character.folder}'.",
            "system_prompt": character.role_prompt,
            "post_history_instructions": "",
            "alternate_greetings": [],
            "tags": ["haruhi-tui"],
            "creator": "",
            "character_version": "",
            "extensions": {
                EXTENSION: {
                    "folder": character.folder,
                    "speaker": character.name,
                    "scenes": [{"id": s.scene_id.split("/", 1)[-1], "text": "\n".join(_scene_lines(s))} for s in character.scenes],
                }
            },
        },
    }


def _scene_lines(scene: Scene) -> list[str]:
    return [f":{line.text}" if line.speaker is None else f"{line.speaker}:「{line.text}」" for line in scene.lines]


def export_card(character: Character, path: str | Path) -> Path:
    """Write the card as ``.json``, or as ``.png`` with the card in a ``chara`` text chunk."""
    target = Path(path)
    card = character_to_card(character)
    payload = json.dumps(card, ensure_ascii=False, indent=2)
    if target.suffix.lower() == ".png":
        from PIL import Image, PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text(PNG_KEYWORD, base64.b64encode(payload.encode("utf-8")).decode("ascii"))
        image = Image.new("RGB", (400, 600), (255, 182, 193))
        with atomic_open(target, "wb") as fh:
            image.save(fh, format="PNG", pnginfo=info)
    else:
        write_text(target, payload + "\n")
    return target


def read_card(path: str | Path) -> dict[str, Any]:
    """Read a card from JSON or PNG; a malformed or oversized card is a HaruhiError that says why."""
    source = Path(path)
    if not source.is_file():
        raise HaruhiError(f"card not found: {source}")
    size = source.stat().st_size
    if source.suffix.lower() == ".png":
        if size > MAX_PNG_BYTES:
            raise HaruhiError(f"{source.name} is {size / 2**20:.0f} MiB: too large for a character card (max {MAX_PNG_BYTES // 2**20} MiB)")
        raw = _card_text_from_png(source)
    else:
        if size > MAX_CARD_BYTES:
            raise HaruhiError(f"{source.name} is {size / 2**20:.0f} MiB: too large for a character card (max {MAX_CARD_BYTES // 2**20} MiB)")
        raw = source.read_bytes()
    try:
        card = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HaruhiError(f"{source.name} is not a character card: its JSON does not parse ({exc})") from exc
    return _validate(card, source.name)


def _card_text_from_png(source: Path) -> bytes:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            text = dict(getattr(image, "text", {}) or {})
    except (UnidentifiedImageError, OSError) as exc:
        raise HaruhiError(f"{source.name} is not a readable PNG image") from exc
    encoded = text.get(PNG_KEYWORD) or text.get("ccv3")
    if not encoded:
        raise HaruhiError(f"{source.name} has no character card in it (no 'chara' text chunk)")
    try:
        return base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise HaruhiError(f"{source.name}: the embedded card is not valid base64") from exc


def _validate(card: Any, name: str) -> dict[str, Any]:
    if not isinstance(card, dict):
        raise HaruhiError(f"{name} is not a character card: expected a JSON object")
    data = card.get("data") if card.get("spec") in (SPEC, "chara_card_v3") else card  # V1 cards are flat
    if not isinstance(data, dict):
        raise HaruhiError(f"{name} is not a character card: 'data' must be an object")
    if not isinstance(data.get("name"), str) or not data["name"].strip():
        raise HaruhiError(f"{name} is not a usable character card: it has no name")
    for key in ("description", "personality", "scenario", "first_mes", "mes_example", "system_prompt"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise HaruhiError(f"{name}: card field '{key}' must be text")
    return data


def _scenes_from_examples(mes_example: str, name: str, user: str) -> list[str]:
    scenes = []
    for block in re.split(r"<START>", mes_example or ""):
        lines = []
        for raw in block.strip().splitlines():
            raw = raw.replace("{{char}}", name).replace("{{user}}", user).strip()
            if not raw:
                continue
            if raw.startswith("*") and raw.endswith("*"):
                lines.append(":" + raw.strip("*"))
            else:
                lines.append(raw)
        if lines:
            scenes.append("\n".join(lines))
    return scenes


def import_card(path: str | Path, characters_dir: str | Path) -> Character:
    """Turn a card into a character folder under ``characters_dir`` and load it back."""
    data = read_card(path)
    name = data["name"].strip()
    ours = (data.get("extensions") or {}).get(EXTENSION) or {}
    folder_name = _SAFE.sub("_", ours.get("folder") or name).strip("_") or "character"
    root = Path(characters_dir)
    folder = root / folder_name
    if folder.exists():
        folder = root / f"{folder_name}_card"
    prompt = data.get("system_prompt") or ""
    if not prompt.strip():
        prompt = "\n\n".join(p for p in (data.get("description"), data.get("personality"),
                                          f"Scenario: {data['scenario']}" if data.get("scenario") else "") if p)
    if isinstance(ours.get("scenes"), list) and ours["scenes"]:
        scenes = [(str(s.get("id") or f"scene_{i}.txt"), str(s.get("text") or "")) for i, s in enumerate(ours["scenes"])]
    else:
        texts = _scenes_from_examples(data.get("mes_example") or "", name, "User")
        if data.get("first_mes"):
            texts.insert(0, f"User:「……」\n{name}:「{data['first_mes'].strip()}」")
        scenes = [(f"card_{i}.txt", t) for i, t in enumerate(texts)]
    speaker = ours.get("speaker") or name
    try:
        (folder / "texts").mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise HaruhiError(f"cannot create {folder}: {exc.strerror}") from exc
    write_text(folder / "system_prompt.txt", prompt.strip() + "\n")
    for file_name, text in scenes:
        safe = _SAFE.sub("_", Path(file_name).stem).strip("_") or "scene"
        write_text(folder / "texts" / f"{safe}.txt", text.strip() + "\n")
    return load_character(folder, speaker=speaker)

