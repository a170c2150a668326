"""A chat with one character, without any UI: the app, the tests and the benchmark all drive this.

:class:`ChatSession` owns the branch of the message tree on screen, builds every prompt through
:class:`~haruhi_tui.core.persona.PersonaBuilder` (with the model's real token counter and the chat's sticky
scenes, so the system block stays a stable prefix and llama.cpp reuses its KV cache), streams the reply
from an :class:`~haruhi_tui.core.engine.Engine`, and writes everything to the :class:`~haruhi_tui.store.Store`
as it happens: the user's message before generation starts, the reply while it streams (throttled,
``incomplete`` until it ends), then ``complete`` or ``stopped``.

If the database refuses a write (locked, disk full), the chat goes on in memory and the write is retried
at the next save; nothing said is dropped. Persona, lorebooks, author's note: :mod:`.roleplay`; pins and the
rolling summary: :mod:`.memory`; continue, impersonate, delete a message: :mod:`.turns`; a chat with several
characters: :mod:`.group_chat`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from haruhi_tui.core import harmony
from haruhi_tui.core.characters import Character
from haruhi_tui.core.engine import Engine, GenerationStats, Sampling
from haruhi_tui.core.harmony import Delta
from haruhi_tui.core.persona import PersonaBuilder, PersonaPrompt, Turn, budget_for, estimate_tokens
from haruhi_tui.core.prompt_format import Conversation
from haruhi_tui.services.greeting import store_greeting
from haruhi_tui.store import Chat, Message, Pin, Store, StoreError

from .held_scenes import ChatHeldScenes
from .memory import ChatMemory
from .roleplay import ChatRoleplay
from .turns import ChatTurns

DeltaCallback = Callable[[Message, Delta], None]
ErrorCallback = Callable[[str], None]


@dataclass
class ChatSettings:
    """Per-chat settings, stored with the chat. ``reasoning_effort`` only matters for gpt-oss (harmony)."""

    user_name: str = ""
    reasoning_effort: str = "low"
    temperature: float = 0.8
    top_p: float = 0.95
    repeat_penalty: float = 1.1
    max_tokens: int = 512
    next_speaker: str = ""  # group chats: the member picked to answer (a folder; "" = by mention, then in turn)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChatSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, repeat_penalty=self.repeat_penalty,
                        max_tokens=self.max_tokens)


@dataclass
class ContextSnapshot:
    """Exactly what was (or would be) sent to the model: the persona blocks and the rendered text."""

    prompt: PersonaPrompt
    text: str
    style: str
    prompt_tokens: int
    model: str
    stats: GenerationStats | None = None


@dataclass
class _Pending:
    """Writes the database refused, retried at the next save."""

    inserts: list[Message] = field(default_factory=list)
    updates: set[int] = field(default_factory=set)


class ChatSession(ChatRoleplay, ChatMemory, ChatTurns, ChatHeldScenes):
    """One chat: the current branch (root to leaf), its character, settings and persona builder."""

    def __init__(self, store: Store, character: Character, chat: Chat, *,
                 on_error: ErrorCallback | None = None) -> None:
        self.store = store
        self.character = character
        self.chat = chat
        self.settings = ChatSettings.from_dict(chat.settings)
        if not self.settings.user_name:
            self.settings.user_name = character.interlocutor
        self.on_error = on_error
        self.messages: list[Message] = store.branch(chat.id) if chat.id > 0 else []
        self.last_context: ContextSnapshot | None = None
        self.scene_order: list[str] = []  # scene order of the prompt llama.cpp evaluated last (reply or warm-up)
        self._init_held_scenes()
        self._builders: dict[tuple[int, str], tuple[Engine, PersonaBuilder]] = {}
        self.pins: list[Pin] = _quiet(lambda: store.pins(chat.id), []) if chat.id > 0 else []
        self._window_start: int | None = None  # id of the oldest message in the history window
        self._token_cache: dict[tuple[int, int, str], int] = {}
        self._pending = _Pending()
        self._next_temp_id = -1
        self._lock = threading.RLock()
        self._init_roleplay()

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def start(cls, store: Store, character: Character, *, model: str = "", settings: ChatSettings | None = None,
              on_error: ErrorCallback | None = None, greet: bool = True) -> "ChatSession":
        """A new chat with ``character`` (user name, reasoning effort from their prefs), opened by their greeting."""
        if settings is None:
            settings = ChatSettings.from_dict(_quiet(lambda: store.pref(f"character:{character.folder}", {}), {}) or {})
        if not settings.user_name:
            settings.user_name = character.interlocutor
        chat = store.create_chat(character.folder, character.name, title=f"{character.name}", model=model,
                                 settings=asdict(settings))
        chat.leaf_id = store_greeting(store, chat.id, character, settings.user_name, on_error) if greet else None
        return cls(store, character, chat, on_error=on_error)

    @classmethod
    def resume(cls, store: Store, chat_id: int, characters: dict[str, Character],
               on_error: ErrorCallback | None = None) -> "ChatSession":
        """The saved chat ``chat_id`` with one character (any chat: :func:`~.group_chat.resume_chat`)."""
        chat = store.chat(chat_id)
        if store.chat_members(chat_id):
            raise StoreError(f"chat {chat.title!r} is a group chat: open it with group_chat.resume_chat")
        character = characters.get(chat.character)
        if character is None:
            raise StoreError(
                f"chat {chat.title!r} is with {chat.character_name or chat.character}, who is not in the characters "
                "folder: pass --characters with the folder that has them"
            )
        return cls(store, character, chat, on_error=on_error)

    @property
    def leaf(self) -> Message | None:
        return self.messages[-1] if self.messages else None

    @property
    def title(self) -> str:
        return self.chat.title or self.character.name

    @property
    def members(self) -> list[Character]:
        """The characters of this chat (one; several in a group chat)."""
        return [self.character]

    def character_for(self, message: Message) -> Character:
        """Who speaks ``message`` if it is a reply (the chat's character; in a group chat, its speaker)."""
        return self.character

    # -- persona ---------------------------------------------------------------------------------
    def builder(self, engine: Engine | None) -> PersonaBuilder:
        """One builder per engine (a compare runs two models on one chat; each keeps its scene index), budgets
        fitted to its context and the blocks this chat uses; no engine: estimated tokens, default budgets."""
        key = (id(engine), self.character.folder)  # a group chat prompts each speaker with their own builder
        held = self._builders.get(key)
        if held is None or held[0] is not engine:
            counter = engine.count_tokens if engine is not None else estimate_tokens
            held = self._builders[key] = (engine, PersonaBuilder(self.character, count_tokens=counter))
        if engine is not None:
            held[1].budget = budget_for(engine.n_ctx, self.settings.max_tokens, **self._roleplay_uses())
        return held[1]

    def _turn(self, m: Message, style: str) -> Turn:
        text = m.content
        if style == "harmony" and m.role == "user":
            text = harmony.strip_special_tokens(text)  # a user cannot inject harmony markers
        speaker = self.settings.user_name if m.role == "user" else self.character.name
        return Turn(m.role, text, speaker)  # type: ignore[arg-type]

    def spoken_turns(self, style: str = "chat", branch: list[Message] | None = None) -> list[Turn]:
        """The branch as turns (speech only; empty failed replies left out), as prompts and exports see it."""
        return [self._turn(m, style) for m in (self.messages if branch is None else branch)
                if m.role in ("user", "assistant") and m.content.strip()]

    def _history(self, upto: list[Message], style: str, builder: PersonaBuilder) -> tuple[list[Turn], int]:
        """Turns the model sees (speech only: analysis is never fed back; failed empty replies left out),
        and how many older turns the history window leaves out.

        When the history outgrows its budget the window's start jumps forward to keep about half of it,
        rather than sliding one turn per message: the turns that follow then only append to the prompt,
        so llama.cpp keeps reusing the cached prefix for many turns instead of re-reading the history
        after every message.
        """
        spoken = [m for m in upto if m.role in ("user", "assistant") and m.content.strip()]
        start = next((i for i, m in enumerate(spoken) if m.id == self._window_start), 0)
        window = spoken[start:]
        cost = [self._turn_tokens(m, style, builder) for m in window]
        if sum(cost) > builder.budget.history:
            keep, used = len(window), 0
            for i in range(len(window) - 1, -1, -1):
                if used + cost[i] > builder.budget.history // 2:
                    break
                used += cost[i]
                keep = i
            while keep < len(window) - 1 and window[keep].role == "assistant":
                keep += 1  # open on the user's line
            window = window[keep:]
            self._window_start = window[0].id if window else None
        return [self._turn(m, style) for m in window], len(spoken) - len(window)

    def _turn_tokens(self, m: Message, style: str, builder: PersonaBuilder) -> int:
        key = (m.id, len(m.content), m.role)
        if key not in self._token_cache:
            self._token_cache[key] = builder.count_tokens(self._turn(m, style).as_line()) + 4
        return self._token_cache[key]

    def build_prompt(self, engine: Engine | None = None, branch: list[Message] | None = None, *,
                     probe: bool = False, query: str | None = None, held_scene_ids: list[str] | None = None
                     ) -> PersonaPrompt:
        """The prompt for replying to the last user message of ``branch`` (default: the current branch), not
        rendered (no ``engine``: see :meth:`builder`); ``probe`` leaves the history window where it was; scenes
        picked for ``query`` (default: that message) and kept in :attr:`scene_order`; ``held_scene_ids``: see
        :meth:`PersonaBuilder.build`."""
        branch = self.messages if branch is None else branch
        persona, builder = self.persona, self.builder(engine)  # the persona first: the user's name follows it
        style = engine.style if engine is not None else "chat"
        window_start, (turns, turn, left_out) = self._window_start, self._conversation(branch, style, builder)
        self._window_start = window_start if probe else self._window_start
        prompt = builder.build(turns, turn, query=query, sticky_scene_ids=self.chat.scene_ids,
                               scene_order=self.scene_order or self.chat.scene_ids,
                               held_scene_ids=held_scene_ids or (), user_name=self.settings.user_name,
                               pins=[p.text for p in self.pins], summary=self.summary_to_send(left_out),
                               persona=persona, lorebooks=self.chat_lorebooks(), authors_note=self.authors_note,
                               scan_turns=self.spoken_turns(style, branch))
        if left_out:
            prompt.dropped_turns += left_out
            for block in prompt.blocks:
                if block.kind == "history":
                    block.cut = f"{prompt.dropped_turns} older turn(s) left out"
        return prompt

    def _conversation(self, branch: list[Message], style: str,
                      builder: PersonaBuilder) -> tuple[list[Turn], Turn | None, int]:
        """The history turns of ``branch``, the message to answer (None: no user message pending) and how many
        older turns the history window leaves out."""
        message = branch[-1] if branch and branch[-1].role == "user" else None
        history = branch[:-1] if message is not None else branch
        turns, left_out = self._history(history, style, builder)
        return turns, (self._turn(message, style) if message is not None else None), left_out

    def build_context(self, engine: Engine, branch: list[Message] | None = None, *,
                      query: str | None = None, hold_scenes: bool = False) -> ContextSnapshot:
        """The prompt for replying to the last user message of ``branch`` (default: the current branch; scenes
        picked for ``query``, default that message), rendered for ``engine``; with no user message pending, the
        prompt as it stands (for the context view). ``hold_scenes`` (a reply or a warm-up): see
        :meth:`_held_scenes`."""
        prompt = self.build_prompt(engine, branch, query=query)
        text = self._render(engine, prompt)
        if hold_scenes:
            prompt, text = self._held_scenes(engine, branch, query, prompt, text)
        tokens = len(engine.tokenize_prompt(text))
        return ContextSnapshot(prompt, text, engine.style, tokens, engine.path.name)

    def _render(self, engine: Engine, prompt: PersonaPrompt) -> str:
        return engine.render(Conversation.from_prompt(prompt), reasoning_effort=self.settings.reasoning_effort)  # type: ignore[arg-type]

    # -- saving ----------------------------------------------------------------------------------
    def _error(self, message: str) -> None:
        if self.on_error is not None:
            self.on_error(message)

    def _insert(self, parent: Message | None, role: str, content: str = "", **kw: Any) -> Message:
        """Insert a message as the new leaf; kept in memory (and retried) if the database refuses."""
        try:
            self.flush()
            msg = self.store.add_message(self.chat.id, parent.id if parent else None, role, content, **kw)  # type: ignore[arg-type]
        except StoreError as exc:
            now = time.time()
            msg = Message(self._next_temp_id, self.chat.id, parent.id if parent else None, role, content,  # type: ignore[arg-type]
                          kw.get("analysis", ""), kw.get("status", "complete"), kw.get("model", ""), now, now,
                          dict(kw.get("stats") or {}), kw.get("character", ""))
            self._next_temp_id -= 1
            self._pending.inserts.append(msg)
            self._error(f"{exc} (kept in memory; saving again at the next message)")
        self.chat.leaf_id = msg.id
        return msg

    def _save(self, msg: Message, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(msg, key, value)
        try:
            self.flush()
            if msg.id < 0:
                return
            self.store.update_message(msg.id, content=msg.content, analysis=msg.analysis, status=msg.status,
                                      stats=msg.stats)
            self._pending.updates.discard(msg.id)
        except StoreError as exc:
            if msg.id not in self._pending.updates:
                self._error(f"{exc} (kept in memory; saving again shortly)")
            self._pending.updates.add(msg.id)

    def flush(self) -> None:
        """Retry the writes the database refused earlier, oldest first (parents before children); a StoreError
        if it still refuses. Also before something reads the chat from the store (a SillyTavern export)."""
        with self._lock:
            while self._pending.inserts:
                msg = self._pending.inserts[0]
                saved = self.store.add_message(self.chat.id, msg.parent_id, msg.role, msg.content,
                                               analysis=msg.analysis, status=msg.status, model=msg.model,
                                               stats=msg.stats, make_leaf=msg is self.leaf, character=msg.character)
                old, msg.id = msg.id, saved.id
                for m in [*self.messages, *self._pending.inserts]:
                    if m.parent_id == old:
                        m.parent_id = saved.id
                self._pending.inserts.pop(0)
            for message_id in list(self._pending.updates):
                msg = next((m for m in self.messages if m.id == message_id), None)
                if msg is not None:
                    self.store.update_message(msg.id, content=msg.content, analysis=msg.analysis, status=msg.status,
                                              stats=msg.stats)
                self._pending.updates.discard(message_id)
            if self.leaf is not None and self.leaf.id > 0 and self.chat.leaf_id != self.leaf.id:
                self.store.set_leaf(self.chat.id, self.leaf.id)
                self.chat.leaf_id = self.leaf.id

    @property
    def unsaved(self) -> int:
        return len(self._pending.inserts) + len(self._pending.updates)

    # -- talking ---------------------------------------------------------------------------------
    def add_user_message(self, text: str) -> Message:
        """Commit what the user said (before any generation starts) and make it the leaf."""
        text = text.strip()
        if not text:
            raise ValueError("empty message")
        msg = self._insert(self.leaf, "user", text)
        self.messages.append(msg)
        if self.chat.title in ("", self.character.name) and sum(m.role == "user" for m in self.messages) == 1:
            self.chat.title = f"{self.character.name}: {text[:40]}"
            _quiet(lambda: self.store.rename_chat(self.chat.id, self.chat.title))
        return msg

    def reply(self, engine: Engine, *, on_delta: DeltaCallback | None = None, cancel: threading.Event | None = None,
              sampling: Sampling | None = None, save_interval: float = 0.5,
              on_start: Callable[[Message], None] | None = None, label: str = "") -> Message:
        """Generate the character's reply to the current leaf (a user message) as a new leaf.

        The reply row exists (``incomplete``) before the first token and is saved every ``save_interval``
        seconds while it streams; it ends ``complete``, ``stopped`` (``cancel`` was set) or ``error``.
        """
        if not self.can_reply():
            raise ValueError("nothing to reply to: send a message first")
        context = self.build_context(engine, hold_scenes=self.warmed_up)
        self.note_evaluated(context.prompt)
        self._keep_scenes(context.prompt.scene_ids)
        model = label or engine.path.name
        if self.chat.model != str(engine.path):
            self.chat.model = str(engine.path)
            _quiet(lambda: self.store.update_chat(self.chat.id, model=self.chat.model))
        reply = self._insert(self.leaf, "assistant", "", status="incomplete", model=model, **self._reply_fields())
        self.messages.append(reply)
        self.last_context = context
        if on_start is not None:
            on_start(reply)
        self._stream_into(reply, engine, context, context.text, sampling=sampling, cancel=cancel, on_delta=on_delta,
                          save_interval=save_interval)
        return reply

    def can_reply(self) -> bool:
        """Whether there is something to reply to (a user message last; in a group chat, anything said)."""
        return self.leaf is not None and self.leaf.role == "user"

    def _reply_fields(self) -> dict[str, Any]:
        """What a new reply row records beyond its text (a group chat: who speaks it)."""
        return {}

    def _keep_scenes(self, scene_ids: list[str]) -> None:
        """Store the scenes a reply's prompt used: they stay (sticky) while the conversation stays on topic."""
        if scene_ids != self.chat.scene_ids:
            self.chat.scene_ids = list(scene_ids)
            _quiet(lambda: self.store.update_chat(self.chat.id, scene_ids=self.chat.scene_ids), self._error)

    def send(self, engine: Engine, text: str, **kwargs: Any) -> Message:
        """``add_user_message`` then ``reply``: one turn."""
        self.add_user_message(text)
        return self.reply(engine, **kwargs)

    def regenerate(self, engine: Engine, **kwargs: Any) -> Message:
        """A new reply to the last user message. The old reply stays in the tree as an alternative
        (a sibling); the new one becomes the leaf."""
        if not any(m.role == "user" for m in self.messages):  # only the greeting: nothing was asked yet
            raise ValueError("nothing to regenerate: send a message first")
        while self.leaf is not None and self.leaf.role == "assistant":
            self.messages.pop()
        return self.reply(engine, **kwargs)

    def switch_to(self, leaf_id: int) -> None:
        """Show another branch (a leaf of this chat's tree)."""
        self.messages = self.store.branch(self.chat.id, leaf_id)
        self.store.set_leaf(self.chat.id, leaf_id)
        self.chat.leaf_id = leaf_id

    # -- edit, branch, compare -------------------------------------------------------------------
    def _index(self, message_id: int) -> int:
        for i, m in enumerate(self.messages):
            if m.id == message_id:
                return i
        raise ValueError(f"message {message_id} is not on the branch shown")

    def edit(self, message_id: int, text: str) -> Message:
        """A new version of an earlier message, as a sibling of it: the old one and everything after it
        stay in the tree as another branch. The new version becomes the leaf; after a user message,
        :meth:`reply` continues from it."""
        text = text.strip()
        if not text:
            raise ValueError("empty message")
        i = self._index(message_id)
        old = self.messages[i]
        parent = self.messages[i - 1] if i > 0 else None
        self.messages = self.messages[:i]
        msg = self._insert(parent, old.role, text, model=old.model if old.role == "assistant" else "",
                           character=old.character)
        self.messages.append(msg)
        return msg

    def alternatives(self, message_id: int) -> tuple[int, int]:
        """Which version a message is among its siblings, and how many there are: (1-based index, count)."""
        try:
            siblings = self.store.siblings(message_id)
        except StoreError:
            return 1, 1
        ids = [m.id for m in siblings]
        return (ids.index(message_id) + 1 if message_id in ids else 1), max(1, len(ids))

    def switch_sibling(self, message_id: int, step: int) -> Message | None:
        """Show the previous (``step=-1``) or next version of a message and the newest branch under it;
        None if there is no such version."""
        siblings = self.store.siblings(message_id)
        ids = [m.id for m in siblings]
        j = ids.index(message_id) + step
        if not 0 <= j < len(ids):
            return None
        self.switch_to(self.store.latest_leaf(ids[j]))
        return siblings[j]

    def compare(self, runs: list[tuple[Engine, Sampling | None, str]], **kwargs: Any) -> list[Message]:
        """Replies to the last user message from each ``(engine, sampling, label)``, one after the other,
        stored as sibling replies (labelled in their ``model``); the last one is the leaf until
        :meth:`switch_to` picks another."""
        replies = []
        for engine, sampling, label in runs:
            while self.leaf is not None and self.leaf.role == "assistant":
                self.messages.pop()
            replies.append(self.reply(engine, sampling=sampling, label=label, **kwargs))
            cancel = kwargs.get("cancel")
            if cancel is not None and cancel.is_set():
                break
        return replies

    def set_reasoning_effort(self, effort: str) -> None:
        """For this chat and as the character's default for new chats."""
        if effort not in ("low", "medium", "high"):
            raise ValueError(effort)
        self.settings.reasoning_effort = effort
        _quiet(lambda: self.store.update_chat(self.chat.id, settings=asdict(self.settings)), self._error)
        key = f"character:{self.character.folder}"
        prefs = _quiet(lambda: self.store.pref(key, {}), {}) or {}
        prefs["reasoning_effort"] = effort
        _quiet(lambda: self.store.set_pref(key, prefs), self._error)


def _quiet(fn: Callable[[], Any], on_error: ErrorCallback | Any = None) -> Any:
    """Run a store call whose failure must not stop the chat; report it if ``on_error`` is a callback."""
    try:
        return fn()
    except StoreError as exc:
        if callable(on_error):
            on_error(str(exc))
            return None
        return on_error
