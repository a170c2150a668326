"""Character card files: Character Card V1/V2/V3 as JSON, inside a PNG, or in a CHARX zip.

Reading gives the card's fields (the V2/V3 ``data`` object, or a V1 card's flat object) and its main picture;
writing embeds cards in a PNG the way SillyTavern does: a V2 ``chara`` and a V3 ``ccv3`` tEXt chunk, both
base64 of the card's JSON. PNG chunks are read and written here rather than through Pillow, which refuses text
chunks over 1 MiB (a card with a big lorebook) and would re-encode the picture. What a card means for a
character folder is :mod:`haruhi_tui.core.cards`'s business.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import HaruhiError

SPEC_V2, SPEC_V3 = "chara_card_v2", "chara_card_v3"
V2_CHUNK, V3_CHUNK = "chara", "ccv3"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CARD_BYTES = 8 * 1024 * 1024      # a card is text; anything larger is not one
MAX_PNG_BYTES = 32 * 1024 * 1024
MAX_CHARX_BYTES = 64 * 1024 * 1024    # the zip file, and everything read out of it together
MAX_ASSET_BYTES = 16 * 1024 * 1024    # the picture taken from a CHARX or a data: URL
_TEXT_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example", "system_prompt",
                "post_history_instructions", "creator_notes", "creator", "character_version", "nickname")
_LIST_FIELDS = ("alternate_greetings", "group_only_greetings", "tags")
#: Pygmalion/Gradio cards (older than V1, still about): their field -> the V1 field.
_PYGMALION = {"char_name": "name", "char_persona": "description", "world_scenario": "scenario",
              "char_greeting": "first_mes", "example_dialogue": "mes_example"}


@dataclass
class CardFile:
    """A card as read from a file: its fields, which spec it declares, its main picture (PNG bytes)."""

    data: dict[str, Any]
    spec: str = ""                       # chara_card_v3, chara_card_v2, or "" for a V1 card
    image: bytes | None = None           # the main icon as PNG, card chunks removed
    warnings: list[str] = field(default_factory=list)


# -- reading ------------------------------------------------------------------------------------------
def read_card_file(path: str | Path) -> CardFile:
    """Read a card from ``.json``, ``.png`` or ``.charx``; a bad file is a HaruhiError that says why."""
    source = Path(path)
    if not source.is_file():
        raise HaruhiError(f"card not found: {source}")
    suffix = source.suffix.lower()
    size = source.stat().st_size
    limit = MAX_PNG_BYTES if suffix in (".png", ".apng") else MAX_CHARX_BYTES if suffix == ".charx" else MAX_CARD_BYTES
    if size > limit:
        raise HaruhiError(f"{source.name} is {size / 2**20:.0f} MiB: too large for a character card "
                          f"(max {limit // 2**20} MiB)")
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise HaruhiError(f"cannot read {source}: {exc.strerror or exc}") from exc
    if suffix in (".png", ".apng") or raw.startswith(PNG_SIGNATURE):
        return _from_png(raw, source.name)
    if suffix == ".charx" or raw.startswith(b"PK\x03\x04"):
        return _from_charx(raw, source.name)
    card, spec = parse_card_json(raw, source.name)
    warnings = _version_warnings(card, spec)
    return CardFile(card, spec, _icon_from_assets(card, None, source.name, warnings), warnings)


def parse_card_json(raw: bytes | str, name: str) -> tuple[dict[str, Any], str]:
    """The card's fields and spec from its JSON text, validated."""
    try:
        card = json.loads(raw.decode("utf-8-sig") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HaruhiError(f"{name} is not a character card: its JSON does not parse ({exc})") from exc
    return validate_card(card, name)


def validate_card(card: Any, name: str) -> tuple[dict[str, Any], str]:
    """Check the fields we use have the right types; lists given as one text become one-item lists."""
    if not isinstance(card, dict):
        raise HaruhiError(f"{name} is not a character card: expected a JSON object")
    spec = card.get("spec") if card.get("spec") in (SPEC_V2, SPEC_V3) else ""
    data = card.get("data") if spec else card  # V1 cards are flat
    if not isinstance(data, dict):
        raise HaruhiError(f"{name} is not a character card: 'data' must be an object")
    data = dict(data)
    if not spec and "char_name" in data and "name" not in data:
        data.update({ours: data.pop(theirs) for theirs, ours in _PYGMALION.items() if theirs in data})
    if not isinstance(data.get("name"), str) or not data["name"].strip():
        raise HaruhiError(f"{name} is not a usable character card: it has no name")
    for key in _TEXT_FIELDS:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise HaruhiError(f"{name}: card field '{key}' must be text")
    for key in _LIST_FIELDS:
        value = data.get(key)
        if isinstance(value, str):  # SillyTavern accepts a lone greeting, and comma-separated tags
            data[key] = [t.strip() for t in value.split(",") if t.strip()] if key == "tags" else [value]
        elif value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise HaruhiError(f"{name}: card field '{key}' must be a list of texts")
    for key in ("extensions", "character_book"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise HaruhiError(f"{name}: card field '{key}' must be an object")
    return data, spec


def _version_warnings(data: dict, spec: str) -> list[str]:
    try:
        newer = spec == SPEC_V3 and float(str(data.get("spec_version", "3.0"))) > 3.0
    except ValueError:
        newer = False
    return [f"{data['name']}: the card is from a newer Character Card spec; some of it may be ignored"] if newer else []


def png_chunks(raw: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks as (type, data), up to IEND; ValueError if it is not a whole PNG."""
    if not raw.startswith(PNG_SIGNATURE):
        raise ValueError("no PNG signature")
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(raw):
            raise ValueError("truncated chunk")
        chunks.append((kind, raw[pos + 8:end]))
        pos = end + 4
        if kind == b"IEND":
            return chunks
    raise ValueError("no IEND chunk")


def _png_text(kind: bytes, body: bytes) -> tuple[str, str] | None:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk; None for other chunks or a damaged one."""
    try:
        keyword, _, rest = body.partition(b"\0")
        if kind == b"tEXt":
            return keyword.decode("latin-1"), rest.decode("latin-1")
        if kind == b"zTXt":
            return keyword.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")
        if kind == b"iTXt":
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            return keyword.decode("latin-1"), (zlib.decompress(text) if compressed else text).decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError):
        return None
    return None


def _is_card_chunk(kind: bytes, body: bytes) -> bool:
    text = _png_text(kind, body) if kind in (b"tEXt", b"zTXt", b"iTXt") else None
    keyword = text[0].lower() if text else ""
    return keyword in (V2_CHUNK, V3_CHUNK) or keyword.startswith("chara-ext-asset_")


def _from_png(raw: bytes, name: str) -> CardFile:
    try:
        chunks = png_chunks(raw)
    except ValueError as exc:
        raise HaruhiError(f"{name} is not a readable PNG image ({exc})") from exc
    texts: dict[str, str] = {}
    for kind, body in chunks:
        text = _png_text(kind, body)
        if text and text[0].lower() in (V2_CHUNK, V3_CHUNK):
            texts.setdefault(text[0].lower(), text[1])
    if not texts:
        raise HaruhiError(f"{name} has no character card in it (no 'chara' or 'ccv3' text chunk)")
    problem: HaruhiError | None = None
    for keyword in (V3_CHUNK, V2_CHUNK):  # the V3 chunk wins when both are there (Character Card V3 spec)
        if keyword not in texts:
            continue
        try:
            payload = base64.b64decode(texts[keyword], validate=False)
        except (binascii.Error, ValueError):
            problem = problem or HaruhiError(f"{name}: the embedded card is not valid base64")
            continue
        try:
            data, spec = parse_card_json(payload, name)
        except HaruhiError as exc:
            problem = problem or exc
            continue
        warnings = _version_warnings(data, spec) + _other_assets_warning(data, name)
        image = as_png(PNG_SIGNATURE + b"".join(_chunk(k, b) for k, b in chunks if not _is_card_chunk(k, b)))
        if image is None:
            warnings.append(f"{name}: its picture cannot be decoded; a portrait is drawn instead")
        return CardFile(data, spec, image, warnings)
    assert problem is not None
    raise problem


def _from_charx(raw: bytes, name: str) -> CardFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        infos = {info.filename: info for info in archive.infolist()}
        info = infos.get("card.json")
        if info is None:
            raise HaruhiError(f"{name} is a zip without card.json at its root: not a CHARX character card")
        if info.file_size > MAX_CARD_BYTES:
            raise HaruhiError(f"{name}: its card.json is too large for a character card")
        data, spec = parse_card_json(archive.read(info), name)
        warnings = _version_warnings(data, spec)
        return CardFile(data, spec, _icon_from_assets(data, archive, name, warnings), warnings)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError, OSError) as exc:
        raise HaruhiError(f"{name} is not a readable CHARX (zip) file: {exc}") from exc


def main_icon(data: dict) -> dict | None:
    """The card's main icon asset: the icon named ``main``, else the first icon (Character Card V3)."""
    assets = data.get("assets")
    icons = [a for a in assets if isinstance(a, dict) and a.get("type") == "icon"] if isinstance(assets, list) else []
    return next((a for a in icons if a.get("name") == "main"), icons[0] if icons else None)


def _other_assets_warning(data: dict, name: str) -> list[str]:
    icon = main_icon(data)
    assets = data.get("assets") if isinstance(data.get("assets"), list) else []
    others = [a for a in assets if a is not icon and isinstance(a, dict) and a.get("uri") != "ccdefault:"]
    if not others:
        return []
    return [f"{name}: {len(others)} card asset(s) besides the main icon (backgrounds, emotions...) are not kept"]


def _icon_from_assets(data: dict, archive: zipfile.ZipFile | None, name: str, warnings: list[str]) -> bytes | None:
    """The main icon's picture as PNG, from ``embeded://`` (CHARX) or a base64 ``data:`` URL; None if there
    is none we can read offline (``ccdefault:``, http). Other assets (backgrounds, emotions) are not kept:
    a warning says how many."""
    icon = main_icon(data)
    warnings.extend(_other_assets_warning(data, name))
    uri = str(icon.get("uri") or "") if icon else ""
    blob: bytes | None = None
    if uri.startswith("embeded://") and archive is not None:
        path = uri[len("embeded://"):]
        member = next((i for i in archive.infolist() if i.filename == path), None)
        if member is None:
            warnings.append(f"{name}: its icon {uri} is not in the archive")
        elif member.file_size > MAX_ASSET_BYTES:
            warnings.append(f"{name}: its icon is too large to keep ({member.file_size / 2**20:.0f} MiB)")
        else:
            blob = archive.read(member)
    elif uri.startswith("data:") and ";base64," in uri:
        try:
            blob = base64.b64decode(uri.split(";base64,", 1)[1], validate=False)
        except (binascii.Error, ValueError):
            warnings.append(f"{name}: its icon is not valid base64")
    if blob is None:
        return None
    png = as_png(blob)
    if png is None:
        warnings.append(f"{name}: its icon is not a picture we can read; a portrait is drawn instead")
    return png


def as_png(blob: bytes) -> bytes | None:
    """``blob`` as PNG bytes (PNG kept as it is, JPEG/WebP/... converted); None if it is no picture."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as image:
            image.load()
            if image.format == "PNG":
                png_chunks(blob)
                return blob
            out = io.BytesIO()
            image.convert("RGBA" if "A" in image.getbands() else "RGB").save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        return None


# -- writing ------------------------------------------------------------------------------------------
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def card_text(card: dict[str, Any]) -> str:
    return json.dumps(card, ensure_ascii=False)


def embed_cards(image_png: bytes, cards: dict[str, dict[str, Any]]) -> bytes:
    """``image_png`` with ``cards`` (chunk keyword -> card) as base64 tEXt chunks before IEND; card chunks it
    already had are replaced."""
    chunks = [(k, b) for k, b in png_chunks(image_png) if not _is_card_chunk(k, b)]
    texts = [(b"tEXt", keyword.encode("latin-1") + b"\0" + base64.b64encode(card_text(card).encode("utf-8")))
             for keyword, card in cards.items()]
    chunks[-1:-1] = texts
    return PNG_SIGNATURE + b"".join(_chunk(k, b) for k, b in chunks)
