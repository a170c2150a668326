"""Compare: the same line answered by two models (or one model with two settings), side by side, streaming.

Both replies are stored as sibling replies labelled with their model; the user picks the one the chat
continues from (1 or 2). The other stays in the tree and can be switched to later like any alternative.
Generation runs one reply after the other in one worker: on a small CPU two models at once would only
share the same cores.
"""

from __future__ import annotations

import threading

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message as TMessage
from textual.screen import Screen
from textual.widgets import Footer, Label, Static

from haruhi_tui.app.services import Report
from haruhi_tui.core.engine import Engine, Sampling
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.store import Message


class CompareScreen(Screen["int | None"]):
    """Dismisses with the id of the picked reply (None: stopped before any reply was written)."""

    BINDINGS = [
        Binding("1", "pick(0)", "Keep left"),
        Binding("2", "pick(1)", "Keep right"),
        Binding("escape", "stop_or_close", "Stop / back"),
    ]

    class Started(TMessage):
        def __init__(self, column: int, reply: Message) -> None:
            super().__init__()
            self.column, self.reply = column, reply

    class Delta(TMessage):
        def __init__(self, column: int, text: str) -> None:
            super().__init__()
            self.column, self.text = column, text

    class Done(TMessage):
        def __init__(self, replies: list[Message], error: str = "") -> None:
            super().__init__()
            self.replies, self.error = replies, error

    def __init__(self, session: ChatSession, runs: list[tuple[Engine, Sampling | None, str]], report: Report) -> None:
        super().__init__()
        self.session = session
        self.runs = runs
        self.report = report
        self.cancel = threading.Event()
        self.generating = True
        self.replies: list[Message] = []
        self.texts = ["" for _ in runs]
        self._column = -1

    def compose(self) -> ComposeResult:
        with Vertical(id="compare"):
            line = next((m.content for m in reversed(self.session.messages) if m.role == "user"), "")
            yield Label(f"Compare replies to: {line[:50]}", classes="dialog-title")  # your line, not the last reply
            with Horizontal(id="compare-row"):
                for i, (_, _, label) in enumerate(self.runs):
                    with VerticalScroll(classes="compare-col", id=f"col-{i}"):
                        yield Label(f"{i + 1}. {label}", classes="section")
                        yield Static("", id=f"text-{i}")
            yield Static("generating…", id="compare-status", classes="note")
        yield Footer()

    def on_mount(self) -> None:
        self.generate()

    @work(thread=True, group="generate")
    def generate(self) -> None:
        column = [-1]

        def started(reply: Message) -> None:
            column[0] += 1
            self.post_message(self.Started(column[0], reply))

        def delta(_: Message, d) -> None:
            if d.channel == "final":
                self.post_message(self.Delta(column[0], d.text))

        try:
            replies = self.session.compare(self.runs, on_start=started, on_delta=delta, cancel=self.cancel)
            self.post_message(self.Done(replies))
        except (HaruhiError, ValueError) as exc:
            self.post_message(self.Done([], str(exc)))
        except Exception as exc:  # a model must never take the app down
            self.post_message(self.Done([], f"compare failed: {type(exc).__name__}: {exc}"))

    @on(Started)
    def _started(self, event: Started) -> None:
        status = f"reply {event.column + 1} of {len(self.runs)}… (Esc stops)"
        self.query_one("#compare-status", Static).update(status)

    @on(Delta)
    def _delta(self, event: Delta) -> None:
        self.texts[event.column] += event.text
        self.query_one(f"#text-{event.column}", Static).update(Text(self.texts[event.column]))

    @on(Done)
    def _done(self, event: Done) -> None:
        self.generating = False
        self.replies = event.replies
        for i, reply in enumerate(event.replies):
            self.texts[i] = reply.content
            stopped = "  [stopped]" if reply.status == "stopped" else ""
            self.query_one(f"#text-{i}", Static).update(Text(reply.content + stopped))
        status = self.query_one("#compare-status", Static)
        if event.error:
            self.report(event.error)
            status.update(event.error)
        else:
            status.update("1 or 2 keeps that reply and goes on from it; Esc keeps the last one")

    def action_pick(self, index: int) -> None:
        if self.generating:
            self.notify("still generating: Esc stops", severity="warning")
            return
        if index < len(self.replies):
            self.dismiss(self.replies[index].id)

    def action_stop_or_close(self) -> None:
        if self.generating:
            self.cancel.set()
            return
        self.dismiss(self.replies[-1].id if self.replies else None)
