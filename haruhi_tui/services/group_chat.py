"""A group scene: one chat with two or more characters, each reply prompted as the character who speaks it.

Like SillyTavern's group chats (in its default "swap character cards" mode), every reply is generated with the
speaker's own prompt: their role prompt, the user's persona as they know it, their classic scenes and lorebook,
through the same :class:`~haruhi_tui.core.persona.PersonaBuilder` as a chat with one character. The speaker's
own earlier lines are the assistant turns; what everybody else said (the user and the other characters) comes
as script lines ``Name:「…」``, consecutive lines in one user turn, the shape of the dataset builder's samples.

Who answers, first match wins:

1. the member the caller names (``reply(speaker=…)``: ``haruhi chat --speaker``);
2. ``@Name`` in the user's last line;
3. the member picked for the chat (ctrl+g in the app; stored in the chat's settings);
4. by mention: a member named in the last line (the user's, or another character's: 春日 asking 长门 something
   lets 长门 answer), like SillyTavern's natural order;
5. in turn: the member after the last one who spoke, in the chat's order (SillyTavern's list order).

A reply can follow any line, not only the user's: the next character may simply go on (Enter on an empty line
in the app). A new group chat opens with a group greeting (``group_greetings`` in a member's character.json),
else the first member's greeting.

The KV cache: the system block is the speaker's, so a reply by another character than the last one re-reads
the whole prompt; the same speaker twice in a row reuses it as in a chat with one character.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Iterable, Sequence

from haruhi_tui.core import harmony
from haruhi_tui.core.characters import Character
from haruhi_tui.core.engine import Engine
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.persona import PersonaBuilder, PersonaPrompt, Turn
from haruhi_tui.core.roleplay import substitute_macros
from haruhi_tui.store import Chat, ChatMember, Message, Store, StoreError

from .chat import ChatSession, ChatSettings, ErrorCallback, _quiet

MENTION = "@"
_ASCII_NAME = re.compile(r"^[\x20-\x7e]+$")


# -- who is meant ---------------------------------------------------------------------------------------
def names_of(character: Character) -> list[str]:
    """What a character may be called in a line: speaking name, display name, nickname, folder."""
    manifest = character.manifest
    names = (character.name, manifest.display_name, manifest.nickname, character.folder)
    return [n for n in dict.fromkeys(n.strip() for n in names) if len(n) >= 2]


def find_member(name: str, members: Sequence[Character]) -> Character:
    """The member called ``name`` (folder, speaking, display or nickname, any case, ``@`` allowed); a
    HaruhiError naming the members otherwise."""
    wanted = name.strip().removeprefix(MENTION).casefold()
    for member in members:
        if wanted in (n.casefold() for n in (*names_of(member), member.name)):
            return member
    raise HaruhiError(f"{name} is not in this chat: pick one of {', '.join(m.name for m in members)}")


def _find(text: str, name: str, prefix: str = "") -> int:
    """Where ``prefix + name`` first occurs in ``text`` (-1: nowhere). A Latin name is a whole word in any case
    (``Harry`` is not in ``Harrying``); a CJK name is found inside a sentence (``长门你说呢``)."""
    if _ASCII_NAME.match(name):
        found = re.search(rf"(?<![A-Za-z0-9_]){re.escape(prefix + name)}(?![A-Za-z0-9_])", text, re.IGNORECASE)
        return found.start() if found else -1
    return text.casefold().find((prefix + name).casefold())


def _first_named(text: str, members: Iterable[Character], prefix: str = "") -> list[Character]:
    """The members whose names occur in ``text`` (after ``prefix``), in the order they first occur."""
    found = []
    for member in members:
        at = min((i for i in (_find(text, n, prefix) for n in names_of(member)) if i >= 0), default=-1)
        if at >= 0:
            found.append((at, member))
    return [member for _, member in sorted(found, key=lambda pair: pair[0])]


def mentioned(text: str, members: Iterable[Character]) -> list[Character]:
    """The members named in ``text``, in the order their names first occur."""
    return _first_named(text, members)


def addressed(text: str, members: Iterable[Character]) -> Character | None:
    """The member a line is addressed to with ``@Name`` (the first, if several), else None."""
    found = _first_named(text, members, MENTION) if MENTION in text else []
    return found[0] if found else None


def script_turns(turns: Sequence[Turn]) -> list[Turn]:
    """Consecutive user turns (the user's and the other characters' lines) merged into one turn of script lines,
    so the speaker's prompt alternates like a dataset sample (a lone line keeps its speaker); the speaker's own
    consecutive lines (picked to go on after themselves) become one turn of theirs."""
    out: list[Turn] = []
    for turn in turns:
        if out and turn.role == "user" and out[-1].role == "user":
            out[-1] = Turn("user", out[-1].as_line() + "\n" + turn.as_line(), "")
        elif out and turn.role == "assistant" and out[-1].role == "assistant":
            out[-1] = Turn("assistant", out[-1].text + "\n" + turn.text, turn.speaker)
        else:
            out.append(turn)
    return out


def group_greeting(members: Sequence[Character], user: str) -> tuple[Character, str] | None:
    """The opening line of a new group chat and who says it: the first group greeting of the first member that
    has one, else the first member's greeting; None when they have neither."""
    for member in members:
        if member.manifest.group_greetings:
            greeter, text = member, member.manifest.group_greetings[0]
            break
    else:
        if not members or not members[0].manifest.greetings:
            return None
        greeter, text = members[0], members[0].manifest.greetings[0]
    text = substitute_macros(text.strip(), user=user, char=greeter.name)
    return (greeter, text) if text else None


def resume_chat(store: Store, chat_id: int, characters: dict[str, Character],
                on_error: ErrorCallback | None = None) -> ChatSession:
    """A saved chat, with one character or a group (its members found among ``characters`` by folder)."""
    members = store.chat_members(chat_id)
    if not members:
        return ChatSession.resume(store, chat_id, characters, on_error=on_error)
    return GroupSession.reopen(store, store.chat(chat_id), members, characters, on_error=on_error)


# -- the session ----------------------------------------------------------------------------------------
class GroupSession(ChatSession):
    """A chat with several characters. ``speaker`` (also ``character``) is who the current prompt is for: the
    next to answer, or who answered last; everything a one-character chat does applies to them."""

    def __init__(self, store: Store, members: Sequence[Character], chat: Chat, *,
                 on_error: ErrorCallback | None = None) -> None:
        if len({m.folder for m in members}) < 2:
            raise HaruhiError("a group chat needs two or more different characters")
        self._members = list(members)
        super().__init__(store, self._members[0], chat, on_error=on_error)
        self.speaker = self.next_speaker()

    # the one-character chat's ``character`` is the speaker here: every prompt is built for them
    @property
    def character(self) -> Character:  # type: ignore[override]
        return self.speaker

    @character.setter
    def character(self, value: Character) -> None:
        self.speaker = value

    # -- opening --------------------------------------------------------------------------------------
    @classmethod
    def start_group(cls, store: Store, members: Sequence[Character], *, model: str = "",
                    settings: ChatSettings | None = None, on_error: ErrorCallback | None = None,
                    greeting: bool = True) -> "GroupSession":
        """A new group chat with ``members`` (in the order they take turns), opened with the group greeting."""
        members = list({m.folder: m for m in members}.values())
        if len(members) < 2:
            raise HaruhiError("a group chat needs two or more different characters")
        first = members[0]
        if settings is None:
            settings = ChatSettings.from_dict(_quiet(lambda: store.pref(f"character:{first.folder}", {}), {}) or {})
        settings.user_name = settings.user_name or first.interlocutor
        names = ", ".join(m.name for m in members)
        chat = store.create_chat(first.folder, names, title=names, model=model, settings=asdict(settings),
                                 members=[ChatMember(m.folder, m.name) for m in members])
        session = cls(store, members, chat, on_error=on_error)
        opening = group_greeting(members, session.settings.user_name) if greeting else None
        if opening is not None:
            greeter, text = opening
            session.messages.append(session._insert(None, "assistant", text, character=greeter.folder))
            session.speaker = session.next_speaker()
        return session

    @classmethod
    def reopen(cls, store: Store, chat: Chat, rows: Sequence[ChatMember], characters: dict[str, Character],
               on_error: ErrorCallback | None = None) -> "GroupSession":
        """A saved group chat, its members found among ``characters`` by folder."""
        missing = [row.character_name or row.character for row in rows if row.character not in characters]
        if missing:
            raise StoreError(f"chat {chat.title!r} is with {', '.join(missing)}, who "
                             f"{'is' if len(missing) == 1 else 'are'} not in the characters folder: pass "
                             "--characters with the folder that has them")
        return cls(store, [characters[row.character] for row in rows], chat, on_error=on_error)

    # -- members --------------------------------------------------------------------------------------
    @property
    def members(self) -> list[Character]:
        return list(self._members)

    def character_for(self, message: Message) -> Character:
        return next((m for m in self._members if m.folder == message.character), self._members[0])

    def member(self, name: str | Character) -> Character:
        """The member called ``name`` (see :func:`find_member`)."""
        return find_member(name.folder if isinstance(name, Character) else name, self._members)

    @property
    def chosen(self) -> Character | None:
        """The member picked to answer from now on (None: by mention, then in turn)."""
        return next((m for m in self._members if m.folder == self.settings.next_speaker), None)

    def choose(self, name: str | Character | None) -> Character | None:
        """Pick who answers from now on (None: back to by mention, then in turn); stored with the chat."""
        member = self.member(name) if name else None
        self.settings.next_speaker = member.folder if member else ""
        self._save_chat(settings=asdict(self.settings))
        self.speaker = self.next_speaker()
        return member

    def cycle_choice(self) -> Character | None:
        """The next pick in the order: automatic, each member in turn, automatic again (the app's ctrl+g)."""
        order: list[Character | None] = [None, *self._members]
        return self.choose(order[(order.index(self.chosen) + 1) % len(order)])

    def next_speaker(self, branch: list[Message] | None = None) -> Character:
        """Who answers next on ``branch`` (default: the branch shown): see the module docstring."""
        spoken = [m for m in (self.messages if branch is None else branch)
                  if m.role in ("user", "assistant") and m.content.strip()]
        last = spoken[-1] if spoken else None
        if last is not None and last.role == "user":
            at = addressed(last.content, self._members)
            if at is not None:
                return at
        if self.chosen is not None:
            return self.chosen
        if last is not None:
            others = self._members if last.role == "user" else [m for m in self._members
                                                                if m is not self.character_for(last)]
            named = mentioned(last.content, others)
            if named:
                return named[0]
        said = next((m for m in reversed(spoken) if m.role == "assistant"), None)
        if said is None:
            return self._members[0]
        return self._members[(self._members.index(self.character_for(said)) + 1) % len(self._members)]

    # -- prompts --------------------------------------------------------------------------------------
    def _turn(self, m: Message, style: str) -> Turn:
        """``m`` as the speaker sees it: their own lines are theirs to say, everybody else's are script lines."""
        if m.role == "assistant":
            who = self.character_for(m)
            if who.folder == self.speaker.folder:
                return Turn("assistant", m.content, who.name)
            name = who.name
        else:
            name = self.settings.user_name
        text = harmony.strip_special_tokens(m.content) if style == "harmony" else m.content
        return Turn("user", text, name)

    def _conversation(self, branch: list[Message], style: str,
                      builder: PersonaBuilder) -> tuple[list[Turn], Turn | None, int]:
        turns, left_out = self._history(branch, style, builder)
        turns = script_turns(turns)
        message = turns.pop() if turns and turns[-1].role == "user" else None
        return turns, message, left_out

    def script(self, branch: list[Message] | None = None) -> list[Turn]:
        """The branch as everybody's lines (the user's as user turns, each character's as theirs): what an export
        shows; empty failed replies left out."""
        return [Turn("user", m.content, self.settings.user_name) if m.role == "user"
                else Turn("assistant", m.content, self.character_for(m).name)
                for m in (self.messages if branch is None else branch)
                if m.role in ("user", "assistant") and m.content.strip()]

    def reply_prompts(self, engine: Engine | None = None) -> list[tuple[PersonaPrompt, Turn]]:
        """Each character reply on the branch with the prompt its speaker gets for it (for ShareGPT samples: the
        speaker's system prompt, what was said before as they see it); replies that answer nothing left out."""
        speaker, out = self.speaker, []
        try:
            for i, m in enumerate(self.messages):
                if m.role != "assistant" or not m.content.strip():
                    continue
                self.speaker = self.character_for(m)
                prompt = self.build_prompt(engine, self.messages[:i], probe=True)
                if any(t.role == "user" for t in prompt.turns):
                    out.append((prompt, Turn("assistant", m.content, self.speaker.name)))
        finally:
            self.speaker = speaker
        return out

    # -- talking --------------------------------------------------------------------------------------
    def can_reply(self) -> bool:
        return self.leaf is not None

    def _reply_fields(self) -> dict[str, Any]:
        return {"character": self.speaker.folder}

    def _keep_scenes(self, scene_ids: list[str]) -> None:
        """Each member's sticky scenes are kept side by side (scene ids start with the character's folder)."""
        others = [s for s in self.chat.scene_ids if not s.startswith(self.speaker.folder + "/")]
        super()._keep_scenes(others + list(scene_ids))

    def add_user_message(self, text: str) -> Message:
        msg = super().add_user_message(text)
        self.speaker = self.next_speaker()
        return msg

    def reply(self, engine: Engine, *, speaker: str | Character | None = None, **kwargs: Any) -> Message:
        """The next character's reply to what was said last (``speaker``: this member, whoever is next)."""
        self.speaker = self.member(speaker) if speaker else self.next_speaker()
        return super().reply(engine, **kwargs)

    def continue_reply(self, engine: Engine, **kwargs: Any) -> Message:
        """Extend the last reply as the character who said it (their prompt, their voice)."""
        if self.leaf is not None and self.leaf.role == "assistant":
            self.speaker = self.character_for(self.leaf)
        return super().continue_reply(engine, **kwargs)

    def talking_with(self) -> str:
        return ", ".join(m.name for m in self._members)

    def delete_message(self, message_id: int) -> None:
        """Delete a message and everything after it; who answers next follows the branch left."""
        super().delete_message(message_id)
        self.speaker = self.next_speaker()

    def _drop_last_reply(self) -> Character | None:
        """Take the last reply off the branch shown (it stays in the tree) and return its speaker."""
        if self.leaf is None or self.leaf.role != "assistant":
            return None
        return self.character_for(self.messages.pop())

    def regenerate(self, engine: Engine, **kwargs: Any) -> Message:
        """A new version of the last reply by the same character (the old one stays as an alternative); after a
        line of the user's, the next character's reply."""
        if self.leaf is None or (self.leaf.role == "assistant" and self.leaf.parent_id is None):
            raise ValueError("nothing to regenerate: send a message first")  # (a greeting answers nothing)
        dropped = self._drop_last_reply()
        return self.reply(engine, speaker=kwargs.pop("speaker", None) or dropped, **kwargs)

    def compare(self, runs: list[tuple[Engine, Any, str]], **kwargs: Any) -> list[Message]:
        """Like a one-character chat's compare, each run a version of the same character's reply."""
        speaker = self._drop_last_reply() or self.next_speaker()
        replies = []
        for engine, sampling, label in runs:
            if replies:
                self._drop_last_reply()
            replies.append(self.reply(engine, speaker=speaker, sampling=sampling, label=label, **kwargs))
            cancel = kwargs.get("cancel")
            if cancel is not None and cancel.is_set():
                break
        return replies
