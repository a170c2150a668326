"""Pieces of the launcher's forms: a labelled field per setting (words, not flag names; a switch for an on/off
setting), and the training set's check, which says when it does not exist yet and builds it on request (what
``haruhi data build`` does, in the background)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static, Switch

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services.character_library import CharacterLibrary

#: Setting names that do not read as words once their underscores are spaces.
LABELS = {
    "lora_r": "LoRA rank", "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
    "lora_targets": "LoRA targets", "gpus": "GPUs", "dtype": "weight type", "load_in_4bit": "load in 4 bits",
    "max_length": "max length (tokens)", "lr_scheduler": "learning-rate schedule", "max_grad_norm": "gradient clip",
    "warmup_ratio": "warm-up share", "grad_accum": "gradient accumulation", "max_steps": "max steps (0: epochs)",
    "max_samples": "max samples (0: all)", "keep_checkpoints": "checkpoints kept", "save_steps": "save every N steps",
    "reasoning_effort": "reasoning effort", "output": "output folder", "base": "base model",
}
TRAIN_SET = "haruhi_train.json"  # what `haruhi data build` writes, and the training default


def label_of(name: str) -> str:
    return LABELS.get(name, name.replace("_", " "))


def form_field(wid: str, label: str, default: Any, help: str, choices=None) -> Horizontal:
    """A label and its input: a switch for on/off, a list for choices, else a text box."""
    widget: Any  # compact: one line each, so an 80x24 terminal shows most of the form
    if isinstance(default, bool):
        widget = Switch(value=default, id=wid)
    elif choices:
        widget = Select([(c, c) for c in choices], value=str(default), allow_blank=False, compact=True, id=wid)
    else:
        widget = Input(str(default), id=wid, placeholder=help, compact=True)
    widget.tooltip = help
    return Horizontal(Label(label), widget, classes="field")


def field_value(widget: Any) -> str:
    """A field's value as text, the way the launcher's form reads every setting."""
    return str(widget.value)


class DatasetCheck(Vertical):
    """Under the dataset field: nothing while the file exists; else what to do, and a button that builds it."""

    DEFAULT_CSS = """
    DatasetCheck { height: auto; padding: 0 1; }
    DatasetCheck #dataset-note { color: $warning; }
    DatasetCheck Button { margin: 1 0; }
    """

    class Built(Message):
        """The training set was built (or failed: ``error``)."""

        def __init__(self, text: str, error: bool = False) -> None:
            super().__init__()
            self.text, self.error = text, error

    def __init__(self, library: CharacterLibrary | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.library = library  # the characters `haruhi data build` reads by default
        self.building = False
        self.target: Path | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="dataset-note")
        yield Button("Build the training set now", id="dataset-build", variant="warning", compact=True)

    def on_mount(self) -> None:
        self.display = False

    def check(self, dataset: str, base_dir: Path) -> None:
        """Show the note when ``dataset`` (a file, or DIR:NAME) is missing under ``base_dir``."""
        if self.building:
            return
        path = Path(dataset.split(":")[0] if ":" in dataset and not Path(dataset).exists() else dataset)
        full = path if path.is_absolute() else base_dir / path
        self.display = not full.exists()
        if not self.display:
            return
        buildable = path.name == TRAIN_SET and self.library is not None
        self.target = full.parent if buildable else None
        how = f"`haruhi data build -o {path.parent}/` writes it from your character library"
        self.query_one("#dataset-note", Static).update(
            f"{dataset} does not exist yet: {how}" + (" (the button does that here, a minute or two)" if buildable
                                                     else f" as {TRAIN_SET}"))
        self.query_one("#dataset-build", Button).display = buildable

    @on(Button.Pressed, "#dataset-build")
    def _build(self, event: Button.Pressed) -> None:
        event.stop()
        if self.building or self.target is None:
            return
        self.building = True
        event.button.disabled = True
        self.query_one("#dataset-note", Static).update(f"building {self.target / TRAIN_SET}…")
        self.run_worker(self._run_build, thread=True, group="dataset-build")

    def _run_build(self) -> None:
        from haruhi_tui.core.dataset import BuildOptions, build, write

        assert self.target is not None and self.library is not None
        note = self.query_one("#dataset-note", Static)
        try:
            characters = self.library.select()
            total, done = len(characters), [0]

            def progress(character) -> None:
                done[0] += 1
                self.app.call_from_thread(note.update, f"building the training set: {character.name} "
                                                       f"({done[0]}/{total} characters)…")

            result = build(characters, BuildOptions(), progress=progress)
            write(result, self.target)
        except (HaruhiError, OSError) as exc:
            self.app.call_from_thread(self._finished, f"could not build it: {exc}", True)
            return
        self.app.call_from_thread(self._finished, f"built {len(result.train):,} training and {len(result.val):,} "
                                                  f"validation samples in {self.target}", False)

    def _finished(self, text: str, error: bool) -> None:
        self.building = False
        self.query_one("#dataset-build", Button).disabled = False
        self.post_message(self.Built(text, error))
