"""SillyTavern chats (``.jsonl``) into and out of the sessions store. UI-free.

A SillyTavern chat file is a header line (``user_name``, ``character_name``, ``create_date``,
``chat_metadata``) and one message per line (``name``, ``is_user``, ``is_system``, ``send_date``, ``mes``,
``extra`` with ``reasoning``; a character's message has ``swipes``, ``swipe_id`` and ``swipe_info``).

In the store a chat is a tree: a character message's swipes are sibling messages under the same parent, the
selected swipe carries the rest of the conversation, its reasoning is the message's ``analysis``. Importing
builds that tree; exporting writes the chat's current branch, each character message with its siblings as
swipes. What the store has no column for (send dates, the message's ``extra``, ``chat_metadata``) rides along
under a ``sillytavern`` key (message ``stats``, chat ``settings``) so an export gives back what was imported.
A hidden message (``is_system``) stays hidden on export; a narrator message becomes a ``system`` message.

A group chat (SillyTavern's ``group chats/*.jsonl``: a header whose names are ``unused``, each character message
named after its speaker, with ``original_avatar``) imports as a group chat of the characters who speak in it,
and a group chat exports as one.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable

from haruhi_tui.core.characters import Character
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import atomic_open
from haruhi_tui.store import Chat, ChatMember, Message, Store, StoreError

KEY = "sillytavern"
MAX_CHAT_BYTES = 128 * 1024 * 1024
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_MAPPED = ("mes", "swipes", "swipe_id", "swipe_info")  # what the message tree itself holds


# -- reading ------------------------------------------------------------------------------------------
def read_st_chat(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the messages of a SillyTavern ``.jsonl`` chat; a bad file is a one-line HaruhiError."""
    source = Path(path)
    if not source.is_file():
        raise HaruhiError(f"chat file not found: {source}")
    if source.stat().st_size > MAX_CHAT_BYTES:
        raise HaruhiError(f"{source.name} is too large for a chat (max {MAX_CHAT_BYTES // 2**20} MiB)")
    try:
        text = source.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HaruhiError(f"{source.name} is not UTF-8 text: not a SillyTavern chat") from exc
    except OSError as exc:
        raise HaruhiError(f"cannot read {source}: {exc.strerror or exc}") from exc
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 in a message is not a line end
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise HaruhiError(f"{source.name} line {number} is not JSON ({exc.msg}): not a SillyTavern chat") from exc
        except (RecursionError, ValueError) as exc:  # nested too deeply, a number too long
            raise HaruhiError(f"{source.name} line {number} is not usable JSON: not a SillyTavern chat") from exc
    if not rows:
        raise HaruhiError(f"{source.name} is empty: not a SillyTavern chat")
    header: dict[str, Any] = {}
    if isinstance(rows[0][1], dict) and "mes" not in rows[0][1]:
        header = rows.pop(0)[1]
    messages = []
    for number, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("mes", ""), str):
            raise HaruhiError(f"{source.name} line {number} is not a SillyTavern message (needs 'mes' text)")
        swipes = row.get("swipes")
        if swipes is not None and (not isinstance(swipes, list) or not all(isinstance(s, str) for s in swipes)):
            raise HaruhiError(f"{source.name} line {number}: 'swipes' must be a list of texts")
        messages.append(row)
    if not isinstance(header.get("chat_metadata", {}), dict):
        raise HaruhiError(f"{source.name}: 'chat_metadata' in the first line must be an object")
    return header, messages


def find_character(characters: Iterable[Character] | Mapping[str, Character], name: str) -> Character | None:
    """The character whose folder, speaking name, display name or nickname is ``name`` (any case)."""
    pool = characters.values() if isinstance(characters, Mapping) else characters
    wanted = name.strip().casefold()
    for character in pool:
        names = (character.folder, character.name, character.manifest.display_name, character.manifest.nickname)
        if wanted and wanted in (n.casefold() for n in names if n):
            return character
    return None


def _chat_character(header: dict, messages: list[dict], characters, wanted: str | None, file: str) -> Character:
    if wanted:
        found = find_character(characters, wanted)
        if found is None:
            raise HaruhiError(f"{wanted} is not among your characters: import their card first")
        return found
    names = [str(header.get("character_name") or "")]
    names += list(dict.fromkeys(str(m.get("name") or "") for m in messages if not m.get("is_user")))
    for name in names:
        found = find_character(characters, name) if name else None
        if found is not None:
            return found
    said = next((n for n in names if n), "")
    raise HaruhiError(f"{file}: the chat is with {said or 'nobody named'}, who is not among your characters: "
                      "import their card first, or name the character to import the chat for")


def _cast(messages: list[dict], characters, file: str) -> dict[str, Character]:
    """Who speaks in a group chat: each character message's name and its character, in the order they first
    speak (empty when fewer than two characters speak: not a group chat)."""
    names = [n for n in dict.fromkeys(str(m.get("name") or "") for m in messages if _role(m) == "assistant") if n]
    if len(names) < 2:
        return {}
    cast = {}
    for name in names:
        found = find_character(characters, name)
        if found is None:
            raise HaruhiError(f"{file}: {name} speaks in this group chat but is not among your characters: import "
                              "their card first")
        cast[name] = found
    return cast if len({c.folder for c in cast.values()}) > 1 else {}


def _role(row: dict[str, Any]) -> str:
    if row.get("is_user"):
        return "user"
    extra = row.get("extra")
    return "system" if isinstance(extra, dict) and extra.get("type") == "narrator" else "assistant"


def _reasoning(extra: Any) -> str:
    return str(extra.get("reasoning") or "") if isinstance(extra, dict) else ""


def _swipes(row: dict[str, Any]) -> tuple[list[str], int, list[dict[str, Any]]]:
    """The message's swipes, the selected one (its text is ``mes``) and each swipe's info."""
    swipes = list(row.get("swipes") or [])
    chosen = row.get("swipe_id", 0)
    chosen = chosen if isinstance(chosen, int) and 0 <= chosen < len(swipes) else 0
    if not swipes:
        swipes = [row.get("mes") or ""]
    swipes[chosen] = row.get("mes", swipes[chosen]) or ""
    infos = row.get("swipe_info") if isinstance(row.get("swipe_info"), list) else []
    return swipes, chosen, [i if isinstance(i, dict) else {} for i in infos] + [{}] * (len(swipes) - len(infos))


def import_st_chat(store: Store, path: str | Path, characters: Iterable[Character] | Mapping[str, Character], *,
                   character: str | None = None) -> Chat:
    """A SillyTavern chat becomes a new chat in ``store`` with one of ``characters`` (found by the file's
    ``character_name``, or ``character``: a folder or name). All or nothing: a failure removes the chat."""
    header, messages = read_st_chat(path)
    file = Path(path).name
    speakers = {} if character else _cast(messages, characters, file)
    cast = list({c.folder: c for c in speakers.values()}.values())
    who = cast[0] if cast else _chat_character(header, messages, characters, character, file)
    said = str(header.get("user_name") or "")
    user_name = (said if said != "unused" else "") or next(
        (str(m.get("name") or "") for m in messages if m.get("is_user") and m.get("name")), "") or who.interlocutor
    first = next((m["mes"] for m in messages if m.get("is_user") and m.get("mes")), "")
    settings = {"user_name": user_name,
                KEY: {"create_date": header.get("create_date", ""), "chat_metadata": header.get("chat_metadata", {})}}
    if cast:
        who, names = cast[0], ", ".join(c.name for c in cast)
        chat = store.create_chat(who.folder, names, title=names, settings=settings,
                                 members=[ChatMember(c.folder, c.name) for c in cast])
    else:
        chat = store.create_chat(who.folder, who.name, title=f"{who.name}: {first[:40]}" if first else who.name,
                                 settings=settings)
    try:
        parent: int | None = None
        for row in messages:
            rest = {k: copy.deepcopy(v) for k, v in row.items() if k not in _MAPPED}
            extra = rest.get("extra") if isinstance(rest.get("extra"), dict) else {}
            model = str(extra.get("model") or "")
            role = _role(row)
            if role != "assistant":
                parent = store.add_message(chat.id, parent, role, row.get("mes") or "",  # type: ignore[arg-type]
                                           analysis=_reasoning(extra), model=model, stats={KEY: {"message": rest}},
                                           make_leaf=False).id
                continue
            swipes, chosen, infos = _swipes(row)
            speaker = speakers[row["name"]].folder if cast and row.get("name") in speakers else ""
            selected = parent
            for i, text in enumerate(swipes):
                own = {"swipe_info": infos[i]}
                if i == chosen:
                    own["message"] = rest
                reasoning = _reasoning(extra) if i == chosen else _reasoning(infos[i].get("extra"))
                added = store.add_message(chat.id, parent, "assistant", text, analysis=reasoning,
                                          model=model if i == chosen else "", stats={KEY: own}, make_leaf=False,
                                          character=speaker)
                if i == chosen:
                    selected = added.id
            parent = selected
        store.set_leaf(chat.id, parent)
    except BaseException:
        with contextlib.suppress(StoreError):
            store.delete_chat(chat.id)
        raise
    return store.chat(chat.id)


# -- writing ------------------------------------------------------------------------------------------
def st_timestamp(when: float) -> str:
    """A message time as SillyTavern writes it: ``June 19, 2023 2:20pm`` (local time)."""
    t = dt.datetime.fromtimestamp(when)
    hour = f"{t.hour % 12 or 12}:{t.minute:02d}{'pm' if t.hour >= 12 else 'am'}"
    return f"{_MONTHS[t.month - 1]} {t.day}, {t.year} {hour}"


def st_create_date(when: float) -> str:
    """A chat's creation time as SillyTavern writes it: ``2023-06-19@14h20m05s``."""
    return dt.datetime.fromtimestamp(when).strftime("%Y-%m-%d@%Hh%Mm%Ss")


def _ours(m: Message) -> dict[str, Any]:
    own = (m.stats or {}).get(KEY)
    return own if isinstance(own, dict) else {}


def _swipe_info(m: Message) -> dict[str, Any]:
    info = copy.deepcopy(_ours(m).get("swipe_info") or {"send_date": st_timestamp(m.created_at), "extra": {}})
    extra = info.get("extra") if isinstance(info.get("extra"), dict) else {}
    extra.pop("reasoning", None)
    if m.analysis:
        extra["reasoning"] = m.analysis
    info["extra"] = extra
    return info


def _row(store: Store, m: Message, user_name: str, character_name: str, cast: dict[str, str]) -> dict[str, Any]:
    row = copy.deepcopy(_ours(m).get("message") or {})
    row.setdefault("name", user_name if m.role == "user" else cast.get(m.character, character_name))
    if cast and m.role == "assistant":
        row.setdefault("original_avatar", f"{m.character or next(iter(cast))}.png")
    row.setdefault("is_user", m.role == "user")
    row.setdefault("is_system", False)
    row.setdefault("send_date", st_timestamp(m.created_at))
    row["mes"] = m.content
    extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
    extra.pop("reasoning", None)
    if m.analysis:
        extra["reasoning"] = m.analysis
    if m.role == "system":
        extra.setdefault("type", "narrator")
    if m.model and m.role == "assistant":
        extra.setdefault("model", m.model)
    row["extra"] = extra
    if m.role == "assistant":
        siblings = [s for s in store.siblings(m.id) if s.role == "assistant"] if m.id > 0 else [m]
        row["swipes"] = [s.content for s in siblings]
        row["swipe_id"] = next(i for i, s in enumerate(siblings) if s.id == m.id)
        row["swipe_info"] = [_swipe_info(s) for s in siblings]
    return row


def st_chat_lines(store: Store, chat_id: int) -> list[dict[str, Any]]:
    """The chat's current branch as SillyTavern rows: the header, then one row per message (a group chat's header
    names nobody, as SillyTavern writes one; its character messages carry their speakers)."""
    chat = store.chat(chat_id)
    cast = {m.character: m.character_name or m.character for m in store.chat_members(chat_id)}
    user_name = str(chat.settings.get("user_name") or "User")
    own = chat.settings.get(KEY) if isinstance(chat.settings.get(KEY), dict) else {}
    header = {"user_name": "unused" if cast else user_name,
              "character_name": "unused" if cast else chat.character_name or chat.character,
              "create_date": own.get("create_date") or st_create_date(chat.created_at),
              "chat_metadata": copy.deepcopy(own.get("chat_metadata") or {})}
    name = next(iter(cast.values()), chat.character_name or chat.character)
    return [header, *(_row(store, m, user_name, name, cast) for m in store.branch(chat_id))]


def export_st_chat(store: Store, chat_id: int, path: str | Path) -> Path:
    """Write the chat's current branch as a SillyTavern ``.jsonl`` chat, atomically."""
    target = Path(path)
    lines = st_chat_lines(store, chat_id)
    with atomic_open(target) as fh:
        for line in lines:
            fh.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    return target
