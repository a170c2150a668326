"""The ``haruhi models`` commands: list local models and the catalogue, prepare the offline default, download
(a catalogue entry or any hub repo), and dequantize a GGUF into a Hugging Face checkpoint for fine-tuning."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from haruhi_tui.core.cli_style import cli_app
from haruhi_tui.core.errors import friendly_errors

models_app = cli_app(
    help="Find, prepare and download models: GGUF files for chat and evaluation, HF checkpoints for training.",
    no_args_is_help=True,
)
console = Console(stderr=True)


@contextmanager
def _progress_bar(transient: bool = True) -> Iterator:
    """A rich bar driven by ``progress(fraction_or_None, message)`` callbacks (None: busy, no percentage)."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=console, transient=transient) as bar:
        task = bar.add_task("starting", total=None)

        def update(fraction: float | None, message: str) -> None:
            if fraction is None:
                bar.update(task, description=message, total=None)
            else:
                bar.update(task, description=message, total=1.0, completed=min(max(fraction, 0.0), 1.0))

        yield update


@models_app.command("list")
@friendly_errors
def list_command(
    dirs: list[Path] = typer.Argument(None, help="Folders (or .gguf files) to look in. Default: the models folder "
                                      "($HARUHI_MODELS or <data dir>/models) and the bundled model."),
    catalogue: bool = typer.Option(False, "--catalogue", help="Only the catalogue of models to download."),
) -> None:
    """Show the GGUF models on this machine, then the catalogue of models `haruhi models get ID` downloads."""
    if not catalogue:
        _print_local(dirs)
    if catalogue or not dirs:
        _print_catalogue()


def _print_local(dirs: list[Path] | None) -> None:
    """Architecture, parameters, quantization, prompt style, size and path of each local GGUF."""
    from haruhi_tui.core.paths import models_dir
    from haruhi_tui.services.local_models import list_local_models

    folders = [d for d in (dirs or []) if not d.is_file()]
    files = [d for d in (dirs or []) if d.is_file()]
    models = list_local_models(folders if dirs else None, files, include_default=not dirs)
    if not models:
        where = ", ".join(str(d) for d in dirs) if dirs else str(models_dir())
        Console().print(f"no GGUF models in {where}. Run `haruhi models default` for the bundled offline model, "
                        "or `haruhi models get ID` to fetch one from the catalogue below.")
        return
    from haruhi_tui.core.fsutil import human_bytes

    table = Table(title="local models", show_lines=True)
    table.add_column("name")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("style", no_wrap=True)
    table.add_column("model · path", overflow="fold")
    for m in models:
        if m.broken:
            table.add_row(f"[red]{m.name}[/]", human_bytes(m.size_bytes), "",
                          f"[red]broken: {m.broken}[/]\n[dim]{m.path}[/]")
        else:
            style = m.style + ("" if m.has_chat_template or m.style == "harmony" else "\n(no template)")
            what = " · ".join(x for x in (m.architecture, m.parameters_label, m.quantization) if x)
            table.add_row(m.name, human_bytes(m.size_bytes), style, f"{what}\n[dim]{m.path}[/]")
    Console().print(table)


def _print_catalogue() -> None:
    """The catalogue at 80 columns: id and fit on the left, what it is and where it comes from on the right."""
    from haruhi_tui.core.engine import DEFAULT_N_CTX
    from haruhi_tui.services.model_catalogue import CATALOGUE

    table = Table(title="catalogue: haruhi models get ID", show_lines=True)
    table.add_column("id", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("fits here", no_wrap=True)
    table.add_column("model · source", overflow="fold")
    for e in CATALOGUE:
        fit = e.fit()
        state = "[green]downloaded[/]" if e.downloaded() else (fit.label() if fit.fits else f"[red]{fit.label()}[/]")
        note = f" · {e.note}" if e.note else ""
        table.add_row(e.id, e.size_label, state, f"{e.label}{note}\n[dim]{e.source}[/]")
    Console().print(table)
    Console().print(f"Any other GGUF on the hub: haruhi models get OWNER/REPO [FILE]. \"fits here\" counts the "
                    f"weights and a context of {DEFAULT_N_CTX} tokens against this machine's RAM (or GPU).")


@models_app.command("default")
@friendly_errors
def default_command() -> None:
    """Assemble the bundled offline model (Gemma 3 270M, Q4_K_M) if needed and print its path."""
    from haruhi_tui.services.bundled_model import default_gguf

    with _progress_bar() as progress:
        path = default_gguf(progress)
    print(path)


@models_app.command("to-hf")
@friendly_errors
def to_hf_command(
    gguf_file: Path = typer.Argument(..., metavar="GGUF",
                                     help="The .gguf to dequantize (e.g. the path `haruhi models default` prints)."),
    out: Path = typer.Argument(..., metavar="OUT",
                               help="Folder for the Hugging Face checkpoint (created; must be empty)."),
    dtype: str = typer.Option("float32", help="float32 keeps the dequantized weights exact; bfloat16 halves the size."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it already holds files."),
) -> None:
    """Dequantize a GGUF into a Hugging Face checkpoint (config, safetensors, tokenizer) to fine-tune it.

    The tokenizer is rebuilt to tokenize exactly like llama.cpp (BOS included where the GGUF asks for it),
    so what you train on is what the chat app feeds the model.
    """
    from haruhi_tui.services.gguf_to_hf import gguf_to_hf

    with _progress_bar() as progress:
        path = gguf_to_hf(gguf_file, out, dtype=dtype, overwrite=overwrite, progress=progress)
    print(path)


@friendly_errors
def get_command(
    model: str = typer.Argument(..., metavar="MODEL", help="A catalogue id (`haruhi models list --catalogue`), "
                                "e.g. qwen2.5-0.5b, or any hub repository, e.g. unsloth/gpt-oss-20b-GGUF."),
    file: Optional[str] = typer.Argument(None, metavar="FILE", help="File in the repo. Default: its only GGUF "
                                         "(or its Q4_K_M one); "
                                         "a repo without GGUFs is downloaded whole (a checkpoint for training)."),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Folder to download into. Default: the models folder."),
    revision: str = typer.Option("main", help="Branch, tag or commit."),
) -> None:
    """Download a catalogue model or any hub repo into the models folder; run again to resume.

    A model already there is not fetched again; disk space is checked first; files are verified by hash.

    HF_ENDPOINT sets a mirror; HF_TOKEN (or `hf auth login`) opens gated repos.
    """
    from haruhi_tui.core.engine import DEFAULT_N_CTX
    from haruhi_tui.services.model_catalogue import download, resolve

    _, _, entry = resolve(model, file)
    if entry is not None and not (fit := entry.fit()).fits:
        console.print(f"[yellow]warning:[/] {fit.problem(entry.id, DEFAULT_N_CTX)}; downloading anyway")
    with _progress_bar() as progress:
        path = download(model, file, dest, revision=revision, progress=progress)
    print(path)


models_app.command("get")(get_command)
models_app.command("download", hidden=True, help="Same as `haruhi models get`.")(get_command)


def register(app: typer.Typer) -> None:
    """Attach ``models`` to the ``haruhi`` app."""
    app.add_typer(models_app, name="models")
