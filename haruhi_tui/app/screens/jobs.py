"""The launcher panel: train, watch, convert, evaluate and the job history, on :mod:`haruhi_tui.services.jobs`.

Jobs are separate processes; this screen only reads their events twice a second, so it can be closed
(or the app quit) while they run, and picks them up again from the store when it opens.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Button,
    Collapsible,
    DataTable,
    Footer,
    Input,
    Log,
    ProgressBar,
    Select,
    Static,
    Switch,
    TabbedContent,
    TabPane,
)
from textual_plotext import PlotextPlot

from haruhi_tui.app.messages import LoadModel
from haruhi_tui.app.widgets.comparison import comparison_view
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services.character_library import CharacterLibrary
from haruhi_tui.services.jobs import CONVERT_TYPES, Job, JobError, Launcher, gpu_count, train_fields

from .job_form import DatasetCheck, field_value, form_field, label_of


def _clock(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class JobsScreen(Screen):
    """Train, watch, convert, evaluate, history."""

    BINDINGS = [
        Binding("escape", "close", "Back to chat"),
        Binding("ctrl+s", "start", "Start", tooltip="Start the form on this tab"),
        Binding("ctrl+x", "cancel_job", "Cancel job", tooltip="Ctrl-C for the watched job: it saves and stops"),
        Binding("ctrl+g", "chat_with_export", "Chat with it", tooltip="Load the exported GGUF in the chat"),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
    ]
    DEFAULT_CSS = """
    JobsScreen .row { height: auto; }
    JobsScreen .field Label { width: 22; padding: 0 1 0 0; }
    JobsScreen .field Input, JobsScreen .field Select { width: 1fr; }
    JobsScreen .field Switch { border: none; height: 1; padding: 0; }
    JobsScreen .field { height: auto; margin: 0 0 1 0; }
    JobsScreen .start-row { dock: bottom; height: auto; background: $panel; padding: 0 0 1 0; }
    JobsScreen #history-detail { height: auto; padding: 0 1; }
    JobsScreen #history { height: 1fr; min-height: 5; }
    JobsScreen #train-command { padding: 0 1; color: $text-muted; }
    JobsScreen #train-problem, JobsScreen #watch-error { color: $error; padding: 0 1; }
    JobsScreen #watch-loss { height: 12; }
    JobsScreen #watch-log { height: 8; }
    JobsScreen Button { margin: 0 1 0 0; }
    """

    def __init__(self, launcher: Launcher, library: CharacterLibrary | None = None) -> None:
        super().__init__()
        self.launcher = launcher
        self.library = library  # what "build the training set" reads
        self.watched: Job | None = None
        self._plotted: tuple = ()
        self._log_shown: list[str] = []
        self.comparison: dict | None = None  # the watched eval group's, once `haruhi eval compare` wrote it
        self.comparison_error = ""

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        fields = train_fields()
        with TabbedContent(initial="tab-train", id="tabs"):
            with TabPane("Train", id="tab-train"):
                with Vertical(classes="start-row"):  # always in view, however long the form
                    yield Static("", id="train-problem")
                    yield Static("", id="train-command")
                    with Horizontal(classes="row"):
                        yield Button("Start training (ctrl+s)", id="train-start", variant="primary", compact=True)
                        yield Button("Copy command", id="train-copy", compact=True)
                with VerticalScroll(id="train-form"):
                    for f in (f for f in fields if f.basic):
                        yield form_field(f"train-{f.name}", label_of(f.name), f.default, f.help, f.choices)
                        if f.name == "dataset":
                            yield DatasetCheck(self.library, id="train-dataset-check")
                    with Collapsible(title="Advanced: every other setting", collapsed=True, id="train-advanced"):
                        for f in (f for f in fields if not f.basic):
                            yield form_field(f"train-{f.name}", label_of(f.name), f.default, f.help, f.choices)
            with TabPane("Watch", id="tab-watch"):
                with VerticalScroll():
                    yield Static("no job yet: start one, or pick one in History", id="watch-title")
                    yield ProgressBar(total=None, show_eta=False, id="watch-progress")
                    yield Static("", id="watch-stats")
                    yield Static("", id="watch-error")
                    yield PlotextPlot(id="watch-loss")
                    yield Log(max_lines=500, id="watch-log")
                    with Horizontal(classes="row"):
                        yield Button("Cancel", id="watch-cancel", variant="error")
                        yield Button("Resume", id="watch-resume")
                        yield Button("Convert…", id="watch-convert")
                        yield Button("Chat with it", id="watch-chat")
            with TabPane("Convert", id="tab-convert"):
                with VerticalScroll():
                    yield form_field("convert-base", "base model", "", "HF folder of the base model")
                    yield form_field("convert-adapter", "adapter", "", "<training output>/adapter (empty: base alone)")
                    yield form_field("convert-out", "GGUF file", "", "empty: the app's models folder")
                    yield form_field("convert-type", "type", "auto", "quantization", CONVERT_TYPES)
                    yield Static("", id="convert-problem")
                    yield Button("Export GGUF", id="convert-start", variant="primary")
            with TabPane("Evaluate", id="tab-eval"):
                with VerticalScroll():
                    yield form_field("eval-model-a", "model A", "", "GGUF file or HF folder (e.g. the base)")
                    yield form_field("eval-adapter-a", "adapter A", "", "LoRA adapter on a folder model")
                    yield form_field("eval-model-b", "model B", "", "e.g. the fine-tune (optional)")
                    yield form_field("eval-adapter-b", "adapter B", "", "")
                    yield form_field("eval-dataset", "validation set", "data/haruhi_val.json", "ShareGPT file")
                    yield form_field("eval-limit", "limit", "0", "first N samples (0 = all)")
                    yield form_field("eval-max-new", "max new tokens", "0", "0 = the default")
                    yield form_field("eval-out", "output folder", "runs/eval", "one sub-folder per model")
                    yield Static("", id="eval-problem")
                    yield Button("Evaluate", id="eval-start", variant="primary")
                    yield Static("", id="eval-results")
            with TabPane("History", id="tab-history"):
                yield DataTable(id="history", cursor_type="row")
                yield Static("", id="history-detail")
        yield Footer()

    def on_mount(self) -> None:
        for wid in ("#watch-loss", "#watch-cancel", "#watch-resume", "#watch-convert", "#watch-chat"):
            self.query_one(wid).display = False  # until a job is watched: then what fits it
        table = self.query_one("#history", DataTable)
        table.add_columns("id", "kind", "name", "status", "started", "result")
        self.refresh_command()
        if self.launcher.available_gpus is None:
            self.run_worker(self._count_gpus, thread=True, group="gpus")
        self.refresh_history()
        running = self.launcher.running()
        if running:
            self.watch(running[0])
        self.set_interval(0.5, self.tick)

    # -- the train form --------------------------------------------------------------------------
    def value(self, wid: str) -> str:
        return field_value(self.query_one(f"#{wid}"))

    def train_form(self) -> dict[str, str]:
        """Only what differs from the defaults, so the command line stays the short one a user would type."""
        form = {}
        for f in train_fields():
            text = self.value(f"train-{f.name}")
            if text != str(f.default) or f.name in ("dataset", "output"):
                form[f.name] = text
        return form

    def refresh_command(self) -> None:
        self.query_one(DatasetCheck).check(self.value("train-dataset"), self.launcher.cwd)
        if self.launcher.available_gpus is None:  # counted in a worker: importing torch takes seconds
            self.query_one("#train-command", Static).update("checking this machine's GPUs…")
            return
        problem, command = "", ""
        try:
            command = self.launcher.plan_train(self.train_form()).display
        except HaruhiError as exc:
            problem = str(exc)
        self.query_one("#train-problem", Static).update(problem)
        self.query_one("#train-command", Static).update(Text("$ " + command) if command else "")

    def _count_gpus(self) -> None:
        count = gpu_count()
        self.app.call_from_thread(self._gpus_counted, count)

    def _gpus_counted(self, count: int) -> None:
        self.launcher.available_gpus = count
        self.refresh_command()

    def on_switch_changed(self, event: Switch.Changed) -> None:
        if event.switch.id and event.switch.id.startswith("train-"):
            self.refresh_command()

    def on_dataset_check_built(self, event: DatasetCheck.Built) -> None:
        self.notify(event.text, severity="error" if event.error else "information", timeout=10)
        self.refresh_command()

    def action_page(self, step: int) -> None:
        """PageDown/PageUp scroll the tab's form wherever the focus is (the tab bar, a field)."""
        tab = self.query_one("#tabs", TabbedContent).active
        for scroll in self.query_one(f"#{tab}").query(VerticalScroll):
            (scroll.scroll_page_down if step > 0 else scroll.scroll_page_up)()
            return

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id and event.input.id.startswith("train-"):
            self.refresh_command()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id and event.select.id.startswith("train-"):
            self.refresh_command()

    # -- actions ---------------------------------------------------------------------------------
    def on_button_pressed(self, event: Button.Pressed) -> None:
        handlers = {
            "train-start": self.start_train, "train-copy": self.copy_command,
            "watch-cancel": self.action_cancel_job, "watch-resume": self.resume_job,
            "watch-convert": self.prefill_convert, "watch-chat": self.action_chat_with_export,
            "convert-start": self.start_convert, "eval-start": self.start_eval,
        }
        handler = handlers.get(event.button.id or "")
        if handler:
            handler()

    def action_start(self) -> None:
        tab = self.query_one("#tabs", TabbedContent).active
        {"tab-train": self.start_train, "tab-convert": self.start_convert, "tab-eval": self.start_eval}.get(
            tab, lambda: None)()

    def _refuse(self, where: str, exc: Exception) -> None:
        self.query_one(f"#{where}-problem", Static).update(str(exc))
        self.notify(str(exc), severity="error", timeout=8)

    def start_train(self) -> None:
        try:
            job = self.launcher.start_train(self.train_form())
        except HaruhiError as exc:
            self._refuse("train", exc)
            return
        self.query_one("#train-problem", Static).update("")
        self.watch(job)

    def copy_command(self) -> None:
        try:
            self.app.copy_to_clipboard(self.launcher.plan_train(self.train_form()).display)
            self.notify("command copied")
        except HaruhiError as exc:
            self._refuse("train", exc)

    def resume_job(self) -> None:
        if self.watched is None:
            return
        try:
            self.watch(self.launcher.resume(self.watched))
        except HaruhiError as exc:
            self.notify(str(exc), severity="error")

    def action_cancel_job(self) -> None:
        if self.watched is None:
            self.notify("no job to cancel", severity="warning")
            return
        try:
            self.launcher.cancel(self.watched)
            self.notify(f"job {self.watched.id}: cancelling (it saves a checkpoint first)")
        except HaruhiError as exc:
            self.notify(str(exc), severity="error")

    def prefill_convert(self) -> None:
        job = self.watched
        if job is None or job.kind != "train":
            self.notify("watch a training job first", severity="warning")
            return
        self.query_one("#convert-base", Input).value = str(job.row.config.get("train", {}).get("base", ""))
        self.query_one("#convert-adapter", Input).value = str(self.launcher.adapter_of(job))
        self.query_one("#tabs", TabbedContent).active = "tab-convert"

    def start_convert(self) -> None:
        try:
            job = self.launcher.start_convert(self.value("convert-base"), self.value("convert-adapter") or None,
                                              self.value("convert-out") or None, self.value("convert-type"))
        except HaruhiError as exc:
            self._refuse("convert", exc)
            return
        self.query_one("#convert-problem", Static).update("")
        self.watch(job)

    def start_eval(self) -> None:
        models = [(self.value(f"eval-model-{k}"), self.value(f"eval-adapter-{k}") or None) for k in "ab"]
        models = [(m, a) for m, a in models if m]
        try:
            limit, max_new = int(self.value("eval-limit") or 0), int(self.value("eval-max-new") or 0)
        except ValueError:
            self._refuse("eval", JobError("limit and max new tokens are whole numbers"))
            return
        try:
            job = self.launcher.start_eval(models, self.value("eval-dataset"), self.value("eval-out"), limit=limit,
                                           max_new_tokens=max_new)
        except HaruhiError as exc:
            self._refuse("eval", exc)
            return
        self.query_one("#eval-problem", Static).update("")
        self.comparison, self.comparison_error = None, ""
        self.query_one("#eval-results", Static).update("")
        self.watch(job)

    def action_chat_with_export(self) -> None:
        gguf = next((g for g in (self.launcher.gguf_of(j) for j in self.launcher.jobs() if j.kind == "convert") if g),
                    None)
        if gguf is None:
            self.notify("no exported GGUF yet: convert a training run first", severity="warning")
            return
        self.app.post_message(LoadModel(str(gguf)))
        self.action_close()

    def action_close(self) -> None:
        self.app.pop_screen()

    # -- watching --------------------------------------------------------------------------------
    def watch(self, job: Job) -> None:
        self.watched = job
        self._plotted, self._log_shown = (), []
        self.query_one("#watch-log", Log).clear()
        self.query_one("#tabs", TabbedContent).active = "tab-watch"
        self.refresh_watch()
        self.refresh_history()

    def tick(self) -> None:
        changed = self.launcher.poll_all()
        job = self.watched
        if job is not None and not job.running and job.kind == "eval":
            group = job.row.config.get("compare")
            nxt = next((j for j in self.launcher.running() if j.kind == "eval" and j.row.config.get("compare") == group
                        and j.id > job.id), None)
            if nxt is not None:
                self.watch(nxt)
                return
        if changed or (job is not None and job.running):
            self.refresh_watch()
        elif job is not None and self._comparison_pending(job):
            self.show_comparison(job)
        if changed:
            self.refresh_history()

    def refresh_watch(self) -> None:
        job = self.watched
        if job is None:
            return
        state = job.state
        self.query_one("#watch-title", Static).update(
            Text(f"job {job.id} · {job.kind} · {job.row.title} · {job.status}\n$ {job.display}"))
        bar = self.query_one("#watch-progress", ProgressBar)
        bar.update(total=state.total or None, progress=state.done)
        last = state.last
        parts = [f"{state.done}/{state.total or '?'} {state.unit}s", f"elapsed {_clock(last.get('elapsed'))}",
                 f"ETA {_clock(last.get('eta'))}"]
        if last.get("loss") is not None:
            parts.append(f"loss {last['loss']:.4f}")
        if last.get("learning_rate") is not None:
            parts.append(f"lr {last['learning_rate']:.2e}")
        rate = last.get("tokens_per_second_recent") or last.get("tokens_per_second")
        if rate:  # in all, per GPU and against one GPU (the same figures as `haruhi train`'s progress line)
            speed = f"{rate:,.0f} tok/s"
            if (last.get("world_size") or 1) > 1 and last.get("tokens_per_second_per_device"):
                scaling = f", {last['scaling']:.0%} of 1 GPU" if last.get("scaling") else ""
                speed += f" ({last['tokens_per_second_per_device']:,.0f}/GPU{scaling})"
            parts.append(speed)
        if last.get("rate"):
            parts.append(f"{last['rate']:.2f} {state.unit}s/s")
        ranks = [m for m in last.get("rank_memory_gb") or [] if m is not None]
        if len(ranks) > 1:
            parts.append(f"GPU {min(ranks):.1f}-{max(ranks):.1f} GB")
        elif last.get("gpu_memory_gb"):
            parts.append(f"GPU {last['gpu_memory_gb']:.1f} GB")
        if last.get("epoch_time"):
            parts.append(f"epoch {_clock(last['epoch_time'])}")
        if state.metrics:
            parts.append("metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in list(state.metrics.items())[:6]))
        self.query_one("#watch-stats", Static).update(" · ".join(parts))
        error = job.row.error or (state.errors[-1] if state.errors else "")
        self.query_one("#watch-error", Static).update(Text(error))
        self.show_actions(job)
        self._plot(job)
        tail = job.log_tail(40)
        if tail != self._log_shown:
            log = self.query_one("#watch-log", Log)
            log.clear()
            log.write_lines(tail)
            self._log_shown = tail
        if self._comparison_pending(job):
            self.show_comparison(job)

    def show_actions(self, job: Job) -> None:
        """The loss curve and the buttons that fit the job: Resume and Convert for training, Chat for an export."""
        train, done = job.kind == "train", job.status == "completed"
        self.query_one("#watch-loss").display = train
        self.query_one("#watch-cancel", Button).display = job.running
        self.query_one("#watch-resume", Button).display = train and not job.running and not done
        self.query_one("#watch-convert", Button).display = train and done
        self.query_one("#watch-chat", Button).display = job.kind == "convert" and done

    def _plot(self, job: Job) -> None:
        losses, rates = job.state.losses, job.state.learning_rates
        key = (job.id, len(losses), len(rates))
        if key == self._plotted:
            return
        self._plotted = key
        widget = self.query_one("#watch-loss", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        if losses:
            plt.plot([s for s, _ in losses], [v for _, v in losses], label="loss")
            if rates:
                peak = max(v for _, v in rates) or 1.0
                top = max(v for _, v in losses)
                plt.plot([s for s, _ in rates], [v / peak * top for _, v in rates], label="lr (scaled)")
            plt.title("loss")
            plt.xlabel(job.state.unit)
        widget.refresh()

    def _comparison_pending(self, job: Job) -> bool:
        return job.kind == "eval" and job.status == "completed" and self.comparison is None \
            and not self.comparison_error

    def show_comparison(self, job: Job) -> None:
        """The group's table, from the comparison.json `haruhi eval compare` writes (polled: it runs a moment)."""
        try:
            data = self.launcher.comparison(job)
        except HaruhiError as exc:
            self.comparison_error = str(exc)
            self.query_one("#eval-problem", Static).update(self.comparison_error)
            return
        if data is None:
            return
        self.comparison = data
        self.query_one("#eval-results", Static).update(comparison_view(data))

    # -- history ---------------------------------------------------------------------------------
    def refresh_history(self) -> None:
        table = self.query_one("#history", DataTable)
        table.clear()
        for job in self.launcher.jobs():
            result = job.row.error[:60] if job.status == "failed" else ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in list(job.row.metrics.items())[:3])
            started = time.strftime("%m-%d %H:%M", time.localtime(job.row.started_at))
            table.add_row(str(job.id), job.kind, job.row.title, job.status, started, result, key=str(job.id))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.watch(self.launcher.job(int(event.row_key.value)))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Under the table, all of the highlighted job: its row has room for a few metrics only."""
        if not event.row_key or not event.row_key.value:
            return
        try:
            job = self.launcher.job(int(event.row_key.value))
        except (HaruhiError, KeyError):
            return
        row = job.row
        ended = time.strftime("%m-%d %H:%M", time.localtime(row.ended_at)) if row.ended_at else "–"
        lines = [f"job {row.id} · {row.kind} · {row.status} · {row.output} · pid {row.pid or '–'} · "
                 f"ended {ended}", f"$ {job.display}"]
        if row.error:
            lines.append(f"error: {row.error}")
        if row.metrics:
            lines.append("metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in row.metrics.items()))
        if row.outputs:
            lines.append("outputs: " + ", ".join(f"{k} {v}" for k, v in row.outputs.items()))
        lines.append("Enter watches it")
        self.query_one("#history-detail", Static).update(Text("\n".join(lines)))
