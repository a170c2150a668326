"""A card's ``character_book`` (Character Card V2/V3 lorebook) to and from SillyTavern's world-info shape.

A character folder keeps its lorebook as ``lorebook.json`` in the shape SillyTavern saves a world (and saves
a card's embedded book): ``{"entries": {"<uid>": {uid, key, keysecondary, content, constant, selective,
order, position, disable, ...}}, "originalData": <the card's book>}``. The mapping follows SillyTavern's
``convertCharacterBook`` (public/scripts/world-info.js) and ``convertWorldInfoToCharacterBook``
(src/endpoints/characters.js), so a book survives card -> folder -> card, fields SillyTavern does not map
(``use_regex``, ``priority``, ``name``) included: they are taken back from ``originalData``.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import HaruhiError

POSITION_BEFORE, POSITION_AFTER = 0, 1  # SillyTavern's world_info_position.before / .after (around the card)
DEFAULT_DEPTH, DEFAULT_WEIGHT, DEFAULT_ORDER = 4, 100, 100
ROLE_SYSTEM = 0

#: world-info entry field <- character_book entry ``extensions`` key, with SillyTavern's default.
_FROM_EXTENSIONS: tuple[tuple[str, str, Any], ...] = (
    ("excludeRecursion", "exclude_recursion", False),
    ("preventRecursion", "prevent_recursion", False),
    ("delayUntilRecursion", "delay_until_recursion", False),
    ("probability", "probability", 100),
    ("useProbability", "useProbability", True),
    ("depth", "depth", DEFAULT_DEPTH),
    ("selectiveLogic", "selectiveLogic", 0),
    ("outletName", "outlet_name", ""),
    ("group", "group", ""),
    ("groupOverride", "group_override", False),
    ("groupWeight", "group_weight", DEFAULT_WEIGHT),
    ("scanDepth", "scan_depth", None),
    ("caseSensitive", "case_sensitive", None),
    ("matchWholeWords", "match_whole_words", None),
    ("useGroupScoring", "use_group_scoring", None),
    ("automationId", "automation_id", ""),
    ("role", "role", ROLE_SYSTEM),
    ("vectorized", "vectorized", False),
    ("sticky", "sticky", None),
    ("cooldown", "cooldown", None),
    ("delay", "delay", None),
    ("matchPersonaDescription", "match_persona_description", False),
    ("matchCharacterDescription", "match_character_description", False),
    ("matchCharacterPersonality", "match_character_personality", False),
    ("matchCharacterDepthPrompt", "match_character_depth_prompt", False),
    ("matchScenario", "match_scenario", False),
    ("matchCreatorNotes", "match_creator_notes", False),
    ("triggers", "triggers", []),
    ("ignoreBudget", "ignore_budget", False),
)

_MAPPED_EXTENSIONS = {theirs for _ours, theirs, _default in _FROM_EXTENSIONS} | {"position", "display_index"}


def _keys(value: Any) -> list[str]:
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    return [str(k) for k in value] if isinstance(value, list) else []


def _object(value: Any) -> dict[str, Any]:
    """A copy of ``value`` when it is a JSON object, else an empty one (hand-edited files hold anything)."""
    return dict(value) if isinstance(value, dict) else {}


def _index(value: Any, default: int) -> int:
    """A display index: a whole number, else ``default`` (entries are sorted by it)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def book_to_world_info(book: Any, where: str) -> tuple[dict[str, Any], list[str]]:
    """A card's ``character_book`` as a world-info object, and warnings for entries that were skipped."""
    if not isinstance(book, dict) or not isinstance(book.get("entries"), list):
        raise HaruhiError(f"{where}: the card's character_book must be an object with a list of entries")
    book = copy.deepcopy(book)
    raw = book["entries"]
    used = {str(e["id"]) for e in raw if isinstance(e, dict) and isinstance(e.get("id"), (int, str))}
    next_id = 0
    entries: dict[str, dict[str, Any]] = {}
    skipped = 0
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("content", ""), str):
            skipped += 1
            continue
        uid = entry.get("id")
        if not isinstance(uid, (int, str)) or str(uid) in entries:
            while str(next_id) in used:
                next_id += 1
            uid = next_id
            used.add(str(uid))
            entry["id"] = uid  # as SillyTavern does: finds the entry in originalData again on export
        ext = entry.get("extensions") if isinstance(entry.get("extensions"), dict) else {}
        world = {
            "uid": uid,
            "key": _keys(entry.get("keys")),
            "keysecondary": _keys(entry.get("secondary_keys")),
            "comment": str(entry.get("comment") or entry.get("name") or ""),
            "content": entry.get("content") or "",
            "constant": bool(entry.get("constant", False)),
            "selective": bool(entry.get("selective", False)),
            "order": entry.get("insertion_order", DEFAULT_ORDER),
            "position": ext.get("position", POSITION_BEFORE if entry.get("position") == "before_char"
                                else POSITION_AFTER),
            "disable": not entry.get("enabled", True),
            "addMemo": bool(entry.get("comment") or entry.get("name")),
            "displayIndex": _index(ext.get("display_index"), index),
        }
        for ours, theirs, default in _FROM_EXTENSIONS:
            world[ours] = copy.deepcopy(ext.get(theirs, default))
        if "case_sensitive" in entry and "case_sensitive" not in ext:
            world["caseSensitive"] = entry["case_sensitive"]
        world["extensions"] = {k: copy.deepcopy(v) for k, v in ext.items() if k not in _MAPPED_EXTENSIONS}
        entries[str(uid)] = world
    warnings = [f"{where}: {skipped} lorebook entr{'y' if skipped == 1 else 'ies'} without text skipped"]
    return {"entries": entries, "originalData": book}, warnings if skipped else []


def world_info_to_book(world: Any, name: str, where: str) -> dict[str, Any]:
    """A world-info object (``lorebook.json``) as a card's ``character_book``."""
    if not isinstance(world, dict) or not isinstance(world.get("entries"), dict):
        raise HaruhiError(f"{where}: a lorebook needs an 'entries' object (SillyTavern world-info format)")
    original = world.get("originalData") if isinstance(world.get("originalData"), dict) else {}
    before = {str(e.get("id")): e for e in original.get("entries") or [] if isinstance(e, dict)}
    book: dict[str, Any] = {k: copy.deepcopy(v) for k, v in original.items() if k != "entries"}
    book.setdefault("name", name)
    book.setdefault("extensions", {})
    book["entries"] = []
    for key, entry in world["entries"].items():
        if not isinstance(entry, dict):
            raise HaruhiError(f"{where}: lorebook entry {key} is not an object")
        uid = entry.get("uid", key)
        base = copy.deepcopy(before.get(str(uid), {}))
        position = entry.get("position", POSITION_BEFORE)
        extensions = _object(base.get("extensions"))
        extensions.update(copy.deepcopy(_object(entry.get("extensions"))))
        extensions.update({"position": position, "display_index": _index(entry.get("displayIndex"),
                                                                          len(book["entries"]))})
        for ours, theirs, default in _FROM_EXTENSIONS:
            extensions[theirs] = copy.deepcopy(entry.get(ours, default))
        base.update({
            "id": uid,
            "keys": _keys(entry.get("key")),
            "secondary_keys": _keys(entry.get("keysecondary")),
            "comment": str(entry.get("comment") or ""),
            "content": str(entry.get("content") or ""),
            "constant": bool(entry.get("constant", False)),
            "selective": bool(entry.get("selective", False)),
            "insertion_order": entry.get("order", DEFAULT_ORDER),
            "enabled": not entry.get("disable", False),
            "position": "before_char" if position == POSITION_BEFORE else "after_char",
            "extensions": extensions,
        })
        base.setdefault("use_regex", False)  # keys are plain text unless written /like this/ (SillyTavern's rule)
        book["entries"].append(base)
    book["entries"].sort(key=lambda e: (e["extensions"].get("display_index", 0), str(e["id"])))
    return book
