"""A chat's settings: who you are in it, how adventurous the character's replies are (temperature) and how long
they may get, and gpt-oss's reasoning effort. Stored with the chat; Enter saves, Esc cancels."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Select, Static

from haruhi_tui.services.chat import ChatSession
from haruhi_tui.services.turns import MAX_TOKENS_RANGE, TEMPERATURE_RANGE
from haruhi_tui.store import StoreError

EFFORTS = ("low", "medium", "high")


class SettingsDialog(ModalScreen[bool]):
    """Dismisses with True when something changed."""

    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, session: ChatSession, fixed_sampling: bool = False) -> None:
        super().__init__()
        self.session = session
        self.fixed_sampling = fixed_sampling  # this run passes its own sampling (tests, benchmarks)

    def compose(self) -> ComposeResult:
        s = self.session.settings
        t_low, t_high = TEMPERATURE_RANGE
        n_low, n_high = MAX_TOKENS_RANGE
        with Vertical(classes="dialog"):
            yield Label(f"Settings of this chat with {self.session.character.name}", classes="dialog-title")
            yield self._field("Your name", Input(s.user_name, id="settings-name"))
            yield self._field("Temperature", Input(f"{s.temperature:g}", id="settings-temperature",
                                                   placeholder=f"{t_low:g} (same every time) to {t_high:g} (wild)"))
            yield self._field("Reply length", Input(str(s.max_tokens), id="settings-length",
                                                    placeholder=f"most tokens per reply, {n_low} to {n_high}"))
            yield self._field("Reasoning", Select([(e, e) for e in EFFORTS], value=s.reasoning_effort,
                                                  allow_blank=False, id="settings-effort"))
            yield Static("", id="settings-problem", classes="problem")
            notes = [f"temperature {t_low:g} to {t_high:g} (0.8 is lively, 0.3 steady); reply length in tokens; "
                     "reasoning only matters for gpt-oss", "Enter or ctrl+s saves, Esc cancels"]
            if self.fixed_sampling:
                notes.insert(0, "this run was started with fixed sampling: temperature and length apply next time")
            yield Static(" · ".join(notes), classes="note")

    @staticmethod
    def _field(label: str, widget) -> Horizontal:
        return Horizontal(Label(label), widget, classes="field")

    def on_mount(self) -> None:
        self.query_one("#settings-problem", Static).display = False
        self.query_one("#settings-name", Input).focus()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_save()

    def _problem(self, text: str) -> None:
        problem = self.query_one("#settings-problem", Static)
        problem.update(text)
        problem.display = True

    def action_save(self) -> None:
        s = self.session.settings
        name = " ".join(self.query_one("#settings-name", Input).value.split())
        try:
            temperature = float(self.query_one("#settings-temperature", Input).value.strip())
        except ValueError:
            self._problem("temperature is a number, like 0.8")
            return
        try:
            length = int(self.query_one("#settings-length", Input).value.strip())
        except ValueError:
            self._problem("reply length is a whole number of tokens, like 512")
            return
        effort = str(self.query_one("#settings-effort", Select).value)
        if not name:
            self._problem("your name cannot be empty")
            return
        before = (s.user_name, s.temperature, s.max_tokens, s.reasoning_effort)
        try:
            self.session.set_sampling(temperature=temperature, max_tokens=length)
            if name != s.user_name:
                self.session.set_user_name(name)
            if effort != s.reasoning_effort:
                self.session.set_reasoning_effort(effort)
        except (ValueError, StoreError) as exc:
            self._problem(str(exc))
            return
        self.dismiss((s.user_name, s.temperature, s.max_tokens, s.reasoning_effort) != before)
