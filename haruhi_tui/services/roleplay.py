"""A chat's role-play settings: who the user plays, the lorebooks it uses, its author's note.

:class:`ChatRoleplay` is mixed into :class:`~haruhi_tui.services.chat.ChatSession`, so the app and the
``haruhi chat`` command call these on the session: :meth:`~ChatRoleplay.set_persona`,
:meth:`~ChatRoleplay.attach_lorebook` / :meth:`~ChatRoleplay.detach_lorebook`,
:meth:`~ChatRoleplay.set_authors_note`. Everything is stored with the chat as it changes; the next prompt
the session builds uses it. The character's own lorebook (``lorebook.json`` in its folder) always applies,
after the chat's.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.lorebook import Lorebook, parse_lorebook_text, read_lorebook_file
from haruhi_tui.core.roleplay import AuthorsNote, UserPersona, check_depth
from haruhi_tui.store import LoreAttachment, Persona, Store, StoredLorebook, StoreError

if TYPE_CHECKING:
    from haruhi_tui.core.characters import Character
    from haruhi_tui.store import Chat


def import_lorebook(store: Store, path: str | Path, name: str = "") -> StoredLorebook:
    """Keep a lorebook file (SillyTavern world info, a character_book, or a card JSON with one) in the
    database under ``name`` (default: its own name or the file's), checked first: a bad file is a HaruhiError."""
    book, text = read_lorebook_file(path)
    return store.add_lorebook(name or book.name, text, source=str(Path(path).resolve()))


class ChatRoleplay:
    """Persona, lorebooks and author's note of one chat (a part of :class:`ChatSession`)."""

    store: Store
    character: "Character"
    chat: "Chat"
    settings: Any  # the session's ChatSettings

    def _error(self, message: str) -> None: ...  # provided by ChatSession

    def _init_roleplay(self) -> None:
        self._attachments: list[LoreAttachment] | None = None
        self._stored_books: dict[int, Lorebook] = {}
        self._file_books: dict[str, tuple[tuple[int, int], Lorebook]] = {}
        self._reported: set[str] = set()
        self.persona  # the user's name follows a stored persona renamed since the chat was last open

    def _save_chat(self, **fields: Any) -> None:
        """Store some chat fields; a refusal is reported and the chat goes on with them in memory."""
        if self.chat.id <= 0:
            return
        try:
            self.store.update_chat(self.chat.id, **fields)
        except StoreError as exc:
            self._error(str(exc))

    # -- persona --------------------------------------------------------------------------------
    @property
    def persona(self) -> UserPersona:
        """Who the user plays in this chat: the chosen stored persona as it is now (an edit applies from the
        next prompt on; the name the user's lines carry follows it), else the name set for the chat, with the
        character's description of its usual interlocutor when it is that one (阿虚 for 春日)."""
        if self.chat.persona_id is not None:
            try:
                row: Persona | None = self.store.persona(self.chat.persona_id)
            except StoreError:
                row = None  # deleted meanwhile: the name set for the chat stays
            if row is not None:
                if row.name != self.settings.user_name:  # renamed: the chat's own name follows (and is kept)
                    self.settings.user_name = row.name
                    self._save_chat(settings=asdict(self.settings))
                return UserPersona(row.name, row.description)
        default = UserPersona.default_for(self.character)
        name = self.settings.user_name or default.name
        return default if name == default.name else UserPersona(name)

    def set_persona(self, persona: int | str | None = None) -> UserPersona:
        """Choose who the user plays: a stored persona's id, a name (a stored persona of that name if there
        is one, else just the name), or None for the character's usual interlocutor. Stored with the chat;
        the user's lines carry the name and ``{{user}}`` resolves to it from the next prompt on."""
        default = UserPersona.default_for(self.character)
        persona_id: int | None = None
        if isinstance(persona, int) and not isinstance(persona, bool):
            row = self.store.persona(persona)  # a StoreError if it was deleted
            persona_id, name = row.id, row.name
        elif persona is None or not str(persona).strip():
            name = default.name
        else:
            name = " ".join(str(persona).split())
            try:
                match = next((p for p in self.store.personas() if p.name == name), None)
            except StoreError:
                match = None
            persona_id = match.id if match else None
        self.chat.persona_id = persona_id
        self.settings.user_name = name
        self._save_chat(persona_id=persona_id, settings=asdict(self.settings))
        return self.persona

    def set_user_name(self, name: str) -> None:
        """Who the user plays in this chat (default: whoever talks to the character most in the scenes); a
        stored persona of that name brings its description (see :meth:`set_persona`)."""
        name = " ".join(name.split())
        if not name:
            raise ValueError("empty name")
        self.set_persona(name)

    # -- author's note --------------------------------------------------------------------------
    @property
    def authors_note(self) -> AuthorsNote:
        return AuthorsNote(self.chat.authors_note, self.chat.note_depth)

    def set_authors_note(self, text: str, depth: int | None = None) -> AuthorsNote:
        """The chat's author's note (empty: none) and, if given, how many messages from the end it goes
        (0: after the last message; a ValueError outside 0..1000)."""
        depth = self.chat.note_depth if depth is None else check_depth(depth)
        self.chat.authors_note, self.chat.note_depth = text.strip(), depth
        self._save_chat(authors_note=self.chat.authors_note, note_depth=depth)
        return self.authors_note

    # -- lorebooks ------------------------------------------------------------------------------
    @property
    def lore_attachments(self) -> list[LoreAttachment]:
        """The lorebooks attached to this chat (not the character's own), in priority order."""
        if self._attachments is None:
            try:
                self._attachments = self.store.chat_lorebooks(self.chat.id) if self.chat.id > 0 else []
            except StoreError as exc:
                self._error(str(exc))
                return []
        return list(self._attachments)

    def attach_lorebook(self, source: int | str | os.PathLike) -> LoreAttachment:
        """Use a lorebook in this chat: a stored lorebook's id (see :func:`import_lorebook`), or a file path,
        read afresh each turn (so edits to the file apply). A file is checked now: a missing or malformed one
        is a HaruhiError and nothing is attached."""
        if self.chat.id <= 0:
            raise StoreError("this chat is not saved: lorebooks can only be attached to a saved chat")
        if isinstance(source, int) and not isinstance(source, bool):
            self._stored(self.store.lorebook(source))  # checks that it exists and parses
            attached = self.store.attach_lorebook(self.chat.id, lorebook_id=source)
        else:
            path = Path(source).expanduser().resolve()
            read_lorebook_file(path)
            attached = self.store.attach_lorebook(self.chat.id, path=str(path))
        self._attachments = None
        return attached

    def detach_lorebook(self, attachment_id: int) -> None:
        self.store.detach_lorebook(attachment_id)
        self._attachments = None

    def chat_lorebooks(self) -> list[Lorebook]:
        """The attached lorebooks, loaded (a file that went missing or broke is reported once and skipped)."""
        books: list[Lorebook] = []
        for attached in self.lore_attachments:
            try:
                if attached.lorebook_id is not None:
                    book = self._stored_books.get(attached.lorebook_id)
                    books.append(book or self._stored(self.store.lorebook(attached.lorebook_id)))
                else:
                    books.append(self._file(attached.path))
            except (HaruhiError, OSError) as exc:
                message = f"lorebook {attached.name} is not used: {exc}"
                if message not in self._reported:
                    self._reported.add(message)
                    self._error(message)
        return books

    def _stored(self, row: StoredLorebook) -> Lorebook:
        book = parse_lorebook_text(row.data, f"stored lorebook {row.name!r}", row.name)
        book = Lorebook(row.name, book.entries, book.scan_depth, book.token_budget, book.recursive, row.source)
        self._stored_books[row.id] = book
        return book

    def _file(self, path: str) -> Lorebook:
        stat = Path(path).stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        held = self._file_books.get(path)
        if held is None or held[0] != stamp:
            held = self._file_books[path] = (stamp, read_lorebook_file(path)[0])
        return held[1]

    def _roleplay_uses(self) -> dict[str, bool]:
        """Which optional prompt blocks this chat uses (the budgets of the others give their room back)."""
        manifest = self.character.manifest
        return {
            "persona": bool(self.persona.description),
            "lore": bool(self.character.lorebook or self.lore_attachments),
            "notes": bool(self.chat.authors_note or manifest.depth_prompt.prompt or manifest.post_history_instructions),
        }
