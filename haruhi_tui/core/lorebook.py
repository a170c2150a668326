"""World info (lorebooks): background entries that enter the prompt when their keys come up in the chat.

Reads SillyTavern's world-info JSON (``{"entries": {"0": {"key": [...], ...}}}``, its standalone lorebooks),
a Character Card V2/V3 ``character_book`` (``{"entries": [{"keys": [...], ...}]}``) and a card JSON that
embeds one; a character folder's ``lorebook.json`` may be either shape. Field meanings and defaults are
SillyTavern's (``newWorldInfoEntryDefinition`` and ``convertCharacterBook`` in its ``world-info.js``).
Which entries fire for a conversation is :mod:`haruhi_tui.core.lore_scan`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .character_manifest import LOREBOOK_FILE
from .errors import HaruhiError

Logic = Literal["and_any", "not_all", "not_any", "and_all"]
Position = Literal["before_char", "after_char", "an_top", "an_bottom", "at_depth", "em_top", "em_bottom"]
LOGICS: tuple[Logic, ...] = ("and_any", "not_all", "not_any", "and_all")  # SillyTavern's selectiveLogic 0..3
POSITIONS: tuple[Position, ...] = (  # SillyTavern's world_info_position 0..6
    "before_char", "after_char", "an_top", "an_bottom", "at_depth", "em_top", "em_bottom")
SYSTEM_POSITIONS = frozenset({"before_char", "after_char", "em_top", "em_bottom"})  # go into the system prompt
MAX_LOREBOOK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class LoreEntry:
    """One entry. ``None`` for case/whole-word/scan depth means "the lorebook's or the chat's setting"."""

    uid: str
    keys: tuple[str, ...]
    content: str
    secondary_keys: tuple[str, ...] = ()
    logic: Logic = "and_any"
    comment: str = ""
    constant: bool = False
    enabled: bool = True
    order: int = 100
    position: Position = "before_char"
    depth: int = 4                     # for position at_depth: messages from the end
    case_sensitive: bool | None = None
    match_whole_words: bool | None = None
    use_regex: bool = False            # Card V3: every key is a regular expression
    scan_depth: int | None = None
    sticky: int = 0                    # messages it stays after firing (0: the chat's default stay)
    cooldown: int = 0                  # messages it cannot fire after it stopped staying
    delay: int = 0                     # fires only once the chat has this many messages
    probability: int = 100
    group: str = ""
    group_override: bool = False
    group_weight: int = 100
    exclude_recursion: bool = False    # cannot be activated by another entry's content
    prevent_recursion: bool = False    # its content does not activate other entries
    ignore_budget: bool = False
    never: bool = False                # @@dont_activate, or an outlet entry (not part of the prompt)

    @property
    def title(self) -> str:
        return self.comment.strip() or (self.keys[0] if self.keys else f"entry {self.uid}")


@dataclass(frozen=True)
class Lorebook:
    name: str
    entries: tuple[LoreEntry, ...]
    scan_depth: int | None = None
    token_budget: int | None = None
    recursive: bool = False
    source: str = ""                   # the file it was read from, if any


# -- reading ------------------------------------------------------------------------------------------------

def _keys(value: Any, where: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # very old SillyTavern files: "key": "a, b"
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise HaruhiError(f"{where}: '{name}' must be a list of texts")
    return tuple(k for k in (str(v).strip() for v in value) if k)


def _int(value: Any, default: int, where: str, name: str) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return int(value)
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise HaruhiError(f"{where}: '{name}' must be a number, not {value!r}") from None


def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _text(value: Any, where: str, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HaruhiError(f"{where}: '{name}' must be text")
    return value


def _decorators(content: str) -> tuple[str, set[str]]:
    """Strip Card V3 / SillyTavern ``@@`` decorator lines off the top of ``content``; the two SillyTavern
    acts on (``@@activate``, ``@@dont_activate``) are returned."""
    if not content.startswith("@@"):
        return content, set()
    lines = content.split("\n")
    found = set()
    while lines and lines[0].startswith("@@"):
        word = lines.pop(0).lstrip("@").split()[:1]
        found.update(w for w in word if w in ("activate", "dont_activate"))
    return "\n".join(lines), found


def _common(raw: dict, where: str, uid: str, *, keys: tuple[str, ...], secondary: tuple[str, ...], selective: bool,
            logic: Any, order: Any, position: Any, ext: dict) -> dict[str, Any]:
    content, decorators = _decorators(_text(raw.get("content"), where, "content"))
    logic_i = _int(logic, 0, where, "selectiveLogic")
    if isinstance(position, str):
        position_name = position if position in POSITIONS else "after_char"
    else:
        pos_i = _int(position, 0, where, "position")
        position_name = POSITIONS[pos_i] if 0 <= pos_i < len(POSITIONS) else None  # 7: an outlet, not inserted
    use_probability = ext.get("useProbability", True)
    return dict(
        uid=uid, keys=keys, content=content, secondary_keys=secondary if selective else (),
        logic=LOGICS[logic_i] if 0 <= logic_i < len(LOGICS) else "and_any",
        order=_int(order, 100, where, "order"), position=position_name or "after_char",
        depth=max(0, _int(ext.get("depth"), 4, where, "depth")),
        scan_depth=None if ext.get("scan_depth") is None else max(0, _int(ext["scan_depth"], 2, where, "scanDepth")),
        sticky=max(0, _int(ext.get("sticky"), 0, where, "sticky")),
        cooldown=max(0, _int(ext.get("cooldown"), 0, where, "cooldown")),
        delay=max(0, _int(ext.get("delay"), 0, where, "delay")),
        probability=_int(ext.get("probability"), 100, where, "probability") if use_probability in (True, None) else 100,
        group=_text(ext.get("group"), where, "group"), group_override=bool(ext.get("group_override")),
        group_weight=max(0, _int(ext.get("group_weight"), 100, where, "groupWeight")),
        exclude_recursion=bool(ext.get("exclude_recursion")), prevent_recursion=bool(ext.get("prevent_recursion")),
        ignore_budget=bool(ext.get("ignore_budget")), match_whole_words=_flag(ext.get("match_whole_words")),
        constant=bool(raw.get("constant")) or "activate" in decorators,
        never=position_name is None or "dont_activate" in decorators,
    )


def _st_entry(raw: Any, where: str, uid: str) -> LoreEntry:
    """An entry of SillyTavern's own world-info file (camelCase fields; ``newWorldInfoEntryDefinition``)."""
    if not isinstance(raw, dict):
        raise HaruhiError(f"{where}: an entry must be a JSON object")
    ext = {"depth": raw.get("depth"), "scan_depth": raw.get("scanDepth"), "sticky": raw.get("sticky"),
           "cooldown": raw.get("cooldown"), "delay": raw.get("delay"), "probability": raw.get("probability"),
           "useProbability": raw.get("useProbability", True), "group": raw.get("group"),
           "group_override": raw.get("groupOverride"), "group_weight": raw.get("groupWeight"),
           "exclude_recursion": raw.get("excludeRecursion"), "prevent_recursion": raw.get("preventRecursion"),
           "ignore_budget": raw.get("ignoreBudget"), "match_whole_words": raw.get("matchWholeWords")}
    fields_ = _common(raw, where, str(raw.get("uid", uid)), keys=_keys(raw.get("key"), where, "key"),
                      secondary=_keys(raw.get("keysecondary"), where, "keysecondary"),
                      selective=raw.get("selective", True) is not False, logic=raw.get("selectiveLogic"),
                      order=raw.get("order"), position=raw.get("position"), ext=ext)
    return LoreEntry(**fields_, comment=_text(raw.get("comment"), where, "comment"), enabled=not raw.get("disable"),
                     case_sensitive=_flag(raw.get("caseSensitive")))


def _book_entry(raw: Any, where: str, index: int) -> LoreEntry:
    """An entry of a card's ``character_book`` (snake_case; SillyTavern keeps its own fields in extensions)."""
    if not isinstance(raw, dict):
        raise HaruhiError(f"{where}: an entry must be a JSON object")
    ext = raw.get("extensions") or {}
    if not isinstance(ext, dict):
        raise HaruhiError(f"{where}: 'extensions' must be an object")
    case = ext.get("case_sensitive", raw.get("case_sensitive"))
    fields_ = _common(raw, where, str(raw.get("id", index)), keys=_keys(raw.get("keys"), where, "keys"),
                      secondary=_keys(raw.get("secondary_keys"), where, "secondary_keys"),
                      selective=bool(raw.get("selective")), logic=ext.get("selectiveLogic"),
                      order=raw.get("insertion_order"),
                      position=ext["position"] if ext.get("position") is not None
                      else raw.get("position") or "after_char",
                      ext=ext)
    return LoreEntry(**fields_, comment=_text(raw.get("comment") or raw.get("name"), where, "comment"),
                     enabled=raw.get("enabled", True) is not False, case_sensitive=_flag(case),
                     use_regex=bool(raw.get("use_regex")))


def parse_lorebook(data: Any, where: str, name: str = "") -> Lorebook:
    """A lorebook from parsed JSON: SillyTavern world info, a character_book, or a card that embeds one."""
    if isinstance(data, dict) and isinstance(data.get("data"), dict):  # a Character Card V2/V3
        name = name or str(data["data"].get("name") or "")
        data = data["data"].get("character_book")
        if data is None:
            raise HaruhiError(f"{where}: this character card has no lorebook (no character_book)")
    elif isinstance(data, dict) and isinstance(data.get("character_book"), dict):
        data = data["character_book"]
    if not isinstance(data, dict) or "entries" not in data:
        raise HaruhiError(f"{where}: not a lorebook: expected SillyTavern world info ({{\"entries\": {{...}}}}) "
                          "or a character card's character_book ({\"entries\": [...]})")
    raw_entries = data["entries"]
    # A world imported from a card keeps the card's book as originalData (SillyTavern does, and so does our
    # card importer): the book's own settings and the entries' use_regex live there.
    original = data.get("originalData") if isinstance(data.get("originalData"), dict) else {}
    if isinstance(raw_entries, dict):
        entries = [_st_entry(raw, f"{where}, entry {key}", str(key)) for key, raw in raw_entries.items()]
        regex = {str(e.get("id")) for e in original.get("entries") or [] if isinstance(e, dict) and e.get("use_regex")}
        entries = [replace(e, use_regex=True) if e.uid in regex else e for e in entries]
    elif isinstance(raw_entries, list):
        entries = [_book_entry(raw, f"{where}, entry {i}", i) for i, raw in enumerate(raw_entries)]
    else:
        raise HaruhiError(f"{where}: 'entries' must be an object (SillyTavern) or a list (character_book)")
    setting = {**original, **data}.get
    scan_depth, budget = setting("scan_depth"), setting("token_budget")
    return Lorebook(
        name=_text(setting("name"), where, "name").strip() or name, entries=tuple(entries),
        scan_depth=None if scan_depth is None else max(0, _int(scan_depth, 2, where, "scan_depth")),
        token_budget=_int(budget, 0, where, "token_budget") or None, recursive=bool(setting("recursive_scanning")),
    )


def parse_lorebook_text(text: str | bytes, where: str, name: str = "") -> Lorebook:
    try:
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise HaruhiError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise HaruhiError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}: not a lorebook") from exc
    return parse_lorebook(data, where, name)


def read_lorebook_file(path: str | Path) -> tuple[Lorebook, str]:
    """A lorebook file and its text (kept as written, so it can be stored and exported unchanged)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_LOREBOOK_BYTES:
            raise HaruhiError(f"{p} is over {MAX_LOREBOOK_BYTES // 2**20} MiB: too large for a lorebook")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise HaruhiError(f"lorebook not found: {p}") from None
    except IsADirectoryError:
        raise HaruhiError(f"{p} is a folder: pass a lorebook .json file") from None
    except OSError as exc:
        raise HaruhiError(f"cannot read {p}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HaruhiError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    book = parse_lorebook_text(text, str(p), p.stem)
    return Lorebook(book.name, book.entries, book.scan_depth, book.token_budget, book.recursive, str(p)), text


def load_lorebook(path: str | Path) -> Lorebook:
    return read_lorebook_file(path)[0]


def character_lorebook(folder: str | Path, warnings: list[str]) -> Lorebook | None:
    """The character folder's ``lorebook.json``; a broken one is a warning (the character stays usable)."""
    path = Path(folder) / LOREBOOK_FILE
    if not path.is_file():
        return None
    try:
        return load_lorebook(path)
    except HaruhiError as exc:
        warnings.append(f"{exc}; the character's lorebook is not used")
        return None
