"""One message on screen: who speaks (in the character's colour), the text as Markdown, and for gpt-oss
the analysis channel in a collapsed "thinking" box that is never part of the character's words.

A reply that is still coming in is plain text (:class:`StreamingText`); it is rendered as Markdown once,
when it is complete. What a screen update costs is mostly laying out the whole conversation again
(measured on a 2-core machine with 40 messages on screen: 14 ms an update, 3 ms without the layout), and
every millisecond of it is taken from llama.cpp's threads; so streamed text is only repainted while it fits
the lines it has, and laid out again only every few lines.
"""

from __future__ import annotations

import time
import zlib

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Collapsible, Markdown, Static

PALETTE = ("#e5c07b", "#61afef", "#c678dd", "#98c379", "#e06c75", "#56b6c2", "#d19a66", "#f0a6ca")
STATUS_NOTES = {
    "incomplete": "incomplete: the app stopped mid-reply (ctrl+r regenerates)",
    "stopped": "stopped",
    "error": "failed",
}
WAITING_NOTE = "waiting for the first words… (Esc stops)"  # on its way: not "incomplete", which means cut off


def character_color(folder: str) -> str:
    """A stable colour per character, so their name looks the same in every chat."""
    return PALETTE[zlib.crc32(folder.encode("utf-8")) % len(PALETTE)]


def character_label(character) -> Text:
    """A character as pickers list them: the name in its colour, the folder (where it differs) and the work."""
    label = Text(character.name, style=f"bold {character_color(character.folder)}")
    if character.folder != character.name:
        label.append(f"  {character.folder}", style="dim")
    if character.source_work:
        label.append(f"  · {character.source_work}", style="italic")
    return label


class StreamingText(Static):
    """Plain text that grows as a reply streams in: repainted in place; when it needs more lines than it has,
    it grows by :attr:`SPARE` lines more than it needs, so the conversation is laid out again only every few
    lines (a layout costs ~30 ms with a handful of messages on screen, a repaint 2-3 ms)."""

    DEFAULT_CSS = "StreamingText { height: auto; }"
    SPARE = 2

    def __init__(self, text: str = "", **kwargs) -> None:
        super().__init__(Text(text), **kwargs)
        self.text = text

    def set_text(self, text: str) -> None:
        self.text = text
        self.styles.height = "auto"
        self.update(Text(text))

    def append(self, more: str) -> None:
        self.text += more
        self.update(Text(self.text), layout=False)
        width = self.size.width
        if not width:  # not laid out yet: the pending layout measures the text
            return
        needed = self.get_content_height(self.size, self.size, width)
        if needed > self.size.height:
            self.styles.height = needed + self.SPARE


class MessageView(Vertical):
    """A user or character message; a character's reply can stream in with :meth:`append`."""

    DEFAULT_CSS = """
    MessageView { height: auto; margin: 0 0 1 0; padding: 0 1; }
    MessageView.user { border-left: thick $primary 40%; }
    MessageView.assistant { border-left: thick $accent; }
    MessageView .speaker { height: 1; text-style: bold; }
    MessageView .note { height: auto; color: $text-muted; text-style: italic; }
    MessageView Markdown { margin: 0; padding: 0; background: transparent; }
    MessageView .streaming { display: none; }
    MessageView Collapsible { margin: 0; padding: 0; border: none; background: transparent; }
    MessageView Collapsible Static { color: $text-muted; }
    """

    def __init__(self, role: str, speaker: str, content: str = "", *, analysis: str = "", status: str = "complete",
                 color: str = "", message_id: int | None = None, show_thinking: bool = False,
                 caption: str = "", waiting: bool = False, version: tuple[int, int] = (1, 1)) -> None:
        super().__init__(classes=role)
        self.role = role
        self.speaker = speaker
        self.content = content
        self.analysis = analysis
        self.status = status
        self.color = color
        self.message_id = message_id
        self.show_thinking = show_thinking
        self.caption = caption  # a note under the text when there is no status to show (a greeting's origin)
        self.waiting = waiting  # generating and nothing shown yet: not "incomplete", which means cut off
        self.version = version  # (n, count) among its alternatives; "n/count" shows when there are several
        self.streaming = False
        self.deltas_shown = 0
        self.first_shown_at = 0.0
        self.last_shown_at = 0.0

    def compose(self) -> ComposeResult:
        yield Static(self._speaker_label(), classes="speaker")
        thinking = Collapsible(StreamingText(self.analysis, classes="analysis"), title="thinking",
                               collapsed=not self.show_thinking)
        thinking.display = bool(self.analysis)
        yield thinking
        yield Markdown(self.content, classes="body")
        yield StreamingText("", classes="streaming")
        note = Static(WAITING_NOTE if self.waiting else STATUS_NOTES.get(self.status, self.caption), classes="note")
        note.display = self.waiting or self.status in STATUS_NOTES or bool(self.caption)
        yield note

    def _speaker_label(self) -> Text:
        label = Text(self.speaker, style=f"bold {self.color}" if self.color else "bold")
        n, count = self.version
        if count > 1 and not self.caption:  # a greeting's caption says which of them it is
            label.append(f"  {n}/{count}", style="dim")
        return label

    def set_version(self, n: int, count: int) -> None:
        """Which alternative this is (a regenerated reply, an edited line): "2/2" beside the speaker."""
        self.version = (n, count)
        if self.is_mounted:
            self.query_one(".speaker", Static).update(self._speaker_label())

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def append(self, channel: str, text: str) -> None:
        """Add streamed text: speech as plain text until :meth:`finish`, analysis to the thinking box."""
        now = time.perf_counter()
        if not self.first_shown_at:
            self.first_shown_at = now
        self.last_shown_at = now
        self.deltas_shown += 1
        if self.waiting:
            self.waiting = False
            self.query_one(".note", Static).display = False
        if channel == "final":
            body = self.query_one(".streaming", StreamingText)
            if not self.streaming:
                self.streaming = True
                self.markdown.display = False
                body.set_text(self.content)  # a continued reply (F7) streams on after what it said
                body.display = True
            self.content += text
            body.append(text)
        else:
            self.analysis += text
            box = self.query_one(Collapsible)
            box.display = True
            box.query_one(".analysis", StreamingText).append(text)

    async def finish(self, content: str, analysis: str, status: str, message_id: int | None = None) -> None:
        """The reply is over: show the saved text exactly, as Markdown, and the status note."""
        self.status = status
        self.waiting = False
        if message_id is not None:
            self.message_id = message_id
        if self.streaming or content != self.content or not content:
            self.content = content
            await self.markdown.update(content or "*(no reply)*")
        if self.streaming:
            self.streaming = False
            self.query_one(".streaming", StreamingText).display = False
            self.markdown.display = True
        self.analysis = analysis
        box = self.query_one(Collapsible)
        box.display = bool(analysis)
        box.query_one(".analysis", StreamingText).set_text(analysis)
        note = self.query_one(".note", Static)
        note.update(STATUS_NOTES.get(status, self.caption))
        note.display = status in STATUS_NOTES or bool(self.caption)

    def set_thinking(self, show: bool) -> None:
        self.show_thinking = show
        self.query_one(Collapsible).collapsed = not show
