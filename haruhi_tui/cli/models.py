"""The ``haruhi models`` commands: list local models, prepare the offline default, download from the hub,
and dequantize a GGUF into a Hugging Face checkpoint for fine-tuning."""

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
) -> None:
    """Show the GGUF models on this machine: architecture, parameters, quantization, prompt style, size."""
    from haruhi_tui.core.paths import models_dir
    from haruhi_tui.services.local_models import list_local_models

    folders = [d for d in (dirs or []) if not d.is_file()]
    files = [d for d in (dirs or []) if d.is_file()]
    models = list_local_models(folders if dirs else None, files, include_default=not dirs)
    if not models:
        where = ", ".join(str(d) for d in dirs) if dirs else str(models_dir())
        Console().print(f"no GGUF models in {where}. Run `haruhi models default` for the bundled offline model, "
                        "or `haruhi models download REPO` to fetch one.")
        return
    table = Table(title="local models")
    for column, justify in (("name", "left"), ("architecture", "left"), ("params", "right"), ("quant", "left"),
                            ("style", "left"), ("size", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("path", overflow="fold")
    from haruhi_tui.core.fsutil import human_bytes

    for m in models:
        if m.broken:
            table.add_row(f"[red]{m.name}[/]", "", "", "", "", human_bytes(m.size_bytes),
                          f"{m.path}\n[red]broken: {m.broken}[/]")
        else:
            table.add_row(m.name, m.architecture, m.parameters_label, m.quantization,
                          m.style + ("" if m.has_chat_template or m.style == "harmony" else " (no template)"),
                          human_bytes(m.size_bytes), str(m.path))
    Console().print(table)


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


@models_app.command("download")
@friendly_errors
def download_command(
    repo: str = typer.Argument(..., help="Hub repository, e.g. unsloth/gpt-oss-20b-GGUF."),
    file: Optional[str] = typer.Argument(None, help="File in the repo. Default: its only GGUF (or its Q4_K_M one); "
                                         "a repo without GGUFs is downloaded whole (a checkpoint for training)."),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Folder to download into. Default: the models folder."),
    revision: str = typer.Option("main", help="Branch, tag or commit."),
) -> None:
    """Download a model from the Hugging Face hub, resumable: run it again after an interruption to continue.

    Free disk space is checked first and every file is verified against the hub's hash. Set HF_ENDPOINT for a
    mirror and HF_TOKEN (or `hf auth login`) for gated repos.
    """
    from haruhi_tui.services.hub import download

    with _progress_bar() as progress:
        path = download(repo, file, dest, revision=revision, progress=progress)
    print(path)


def register(app: typer.Typer) -> None:
    """Attach ``models`` to the ``haruhi`` app."""
    app.add_typer(models_app, name="models")
