"""How a built persona prompt (or a ShareGPT sample) becomes a model's input.

Three styles, chosen by what the model is:

* ``harmony`` — gpt-oss: our renderer in :mod:`haruhi_tui.core.harmony`; the persona is the developer message.
* ``chat`` — a model with its own chat template: a list of ``{"role", "content"}`` messages, which the
  engine (llama.cpp or the HF tokenizer) formats with that template.
* ``script`` — a base model without a template (the bundled Gemma 3 270M): a play script that ends on
  ``春日:「`` so the model continues as the character and stops at ``」``.

User turns are always written ``speaker:「text」`` (who speaks is kept); assistant turns are the bare
line the character says. The same conventions hold in the dataset, so training and chat match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from . import harmony
from .persona import PersonaPrompt, Turn

Style = Literal["harmony", "chat", "script"]
STYLES: tuple[Style, ...] = ("harmony", "chat", "script")

SCRIPT_OPEN, SCRIPT_CLOSE = "「", "」"


@dataclass(frozen=True)
class Conversation:
    """A model-neutral conversation: the system text and alternating turns (last may be a target)."""

    system: str
    turns: tuple[Turn, ...]
    character: str

    @classmethod
    def from_prompt(cls, prompt: PersonaPrompt) -> "Conversation":
        return cls(prompt.system, tuple(prompt.turns), prompt.character)


def detect_style(architecture: str | None, chat_template: str | None) -> Style:
    """Which style a model speaks: harmony for gpt-oss (or a template with harmony channels), its own
    template if it has one, else the play script (a base model such as the bundled Gemma 3 270M)."""
    arch = (architecture or "").lower().replace("_", "-")
    if arch in ("gpt-oss", "gptoss") or (chat_template and "<|channel|>" in chat_template):
        return "harmony"
    if chat_template and chat_template.strip():
        return "chat"
    return "script"


def message_content(turn: Turn) -> str:
    """What a turn's message holds: ``speaker:「text」`` for users, the bare line for the character."""
    return turn.as_line() if turn.role == "user" else turn.text


def to_messages(conv: Conversation) -> list[dict[str, str]]:
    """OpenAI-style messages (system first) for chat templates and ShareGPT."""
    messages = [{"role": "system", "content": conv.system}] if conv.system else []
    messages.extend({"role": t.role, "content": message_content(t)} for t in conv.turns)
    return messages


#: The user line put before a conversation the character opens (a greeting) for chat templates that insist
#: on user/assistant alternation starting with the user (Gemma, Llama 2, Mistral…): SillyTavern's convention.
CHAT_START = "[Start a new chat]"


def opened_by_user(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` with :data:`CHAT_START` as the first user turn when the character speaks first."""
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
    if first is None or messages[first]["role"] != "assistant":
        return messages
    return [*messages[:first], {"role": "user", "content": CHAT_START}, *messages[first:]]


def harmony_segments(conv: Conversation, *, add_generation_prompt: bool,
                     reasoning_effort: harmony.ReasoningEffort = "low") -> list[harmony.Segment]:
    return harmony.render_segments(
        conv.system,
        [(t.role, message_content(t)) for t in conv.turns],
        reasoning_effort=reasoning_effort,
        add_generation_prompt=add_generation_prompt,
    )


def script_segments(conv: Conversation, *, add_generation_prompt: bool) -> list[harmony.Segment]:
    """The play-script rendering; the character's lines (and their closing 」) are trainable."""
    segments = [harmony.Segment(conv.system.rstrip() + "\n\n")] if conv.system else []
    for turn in conv.turns:
        if turn.role == "user":
            segments.append(harmony.Segment(turn.as_line() + "\n"))
        else:
            segments.append(harmony.Segment(f"{conv.character}:{SCRIPT_OPEN}"))
            segments.append(harmony.Segment(turn.text + SCRIPT_CLOSE, trainable=True))
            segments.append(harmony.Segment("\n"))
    if add_generation_prompt:
        segments.append(harmony.Segment(f"{conv.character}:{SCRIPT_OPEN}"))
    elif segments and segments[-1].text == "\n":
        segments.pop()
    return segments


def render_segments(conv: Conversation, style: Style, *, add_generation_prompt: bool,
                    reasoning_effort: harmony.ReasoningEffort = "low") -> list[harmony.Segment]:
    """Segments for the text styles (``harmony``/``script``); ``chat`` goes through a template instead."""
    if style == "harmony":
        return harmony_segments(conv, add_generation_prompt=add_generation_prompt, reasoning_effort=reasoning_effort)
    if style == "script":
        return script_segments(conv, add_generation_prompt=add_generation_prompt)
    raise ValueError("the chat style is rendered by the model's own template: use to_messages()")


def render_text(conv: Conversation, style: Style, **kwargs) -> str:
    return "".join(s.text for s in render_segments(conv, style, **kwargs))


def stop_strings(style: Style) -> list[str]:
    """Strings that end a reply in each style (the engine also stops on its end-of-generation token)."""
    if style == "script":
        return [SCRIPT_CLOSE, "\n"]
    if style == "harmony":
        return list(harmony.STOP_TOKENS)
    return []


def reply_text(raw: str, style: Style) -> str:
    """The character's speech in a raw completion (harmony analysis and special tokens removed)."""
    if style == "harmony":
        return harmony.final_text(raw)
    if style == "script":
        return raw.split(SCRIPT_CLOSE, 1)[0].split("\n", 1)[0].strip()
    return harmony.strip_special_tokens(raw).strip()


def conversation_from_messages(messages: Sequence[dict[str, str]], character: str) -> Conversation:
    """Rebuild a :class:`Conversation` from messages (a ShareGPT sample); user turns stay as written."""
    system = ""
    turns: list[Turn] = []
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "system":
            system = content
        elif role == "user":
            turns.append(Turn("user", content, ""))
        else:
            turns.append(Turn("assistant", content, character))
    return Conversation(system, tuple(turns), character)
