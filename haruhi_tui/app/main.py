"""Entry point of ``haruhi-tui``: parse the command line (typer, like ``haruhi`` and ``haruhi-convert``), then run
the app."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from haruhi_tui.core.cli_style import cli_app
from haruhi_tui.core.engine import DEFAULT_N_CTX
from haruhi_tui.core.errors import HaruhiError, friendly_errors

from . import crash

if TYPE_CHECKING:
    from .app import HaruhiApp

HELP = """Chat with a ChatHaruhi character in a full-screen terminal app, on a local GGUF model (gpt-oss speaks
harmony; a base model without a template, like the bundled Gemma 3 270M, answers as a play script). Chats are
saved as you go and resume where you left off.

The bundled Gemma 3 270M is a small demo model: quick and offline, but its replies often wander. In the app,
ctrl+p then "Download model" fetches a better one; ctrl+o picks it.

Keys: Enter sends, Esc stops a reply, ctrl+r regenerates, F2 shows the prompt, F1 lists every key.
"""

app = cli_app(name="haruhi-tui")


@app.command(help=HELP)
@friendly_errors
def start(
    characters: Optional[Path] = typer.Option(
        None, "--characters", "-c", metavar="DIR",
        help="Your own folder of ChatHaruhi character folders ($HARUHI_CHARACTERS), listed with the bundled "
             "starters and the characters you downloaded or imported."),
    model: Optional[Path] = typer.Option(
        None, "--model", "-m", metavar="GGUF",
        help="GGUF model to chat with (default: the last one used, else the bundled Gemma 3 270M)."),
    models_dirs: list[Path] = typer.Option(
        [], "--models-dir", metavar="DIR",
        help="Another folder of GGUF files for the model picker (the models folder, $HARUHI_MODELS or "
             "<data dir>/models, is always searched); repeatable."),
    db: Optional[Path] = typer.Option(
        None, "--db", metavar="FILE",
        help="Sessions database (default: <data dir>/sessions.db; $HARUHI_HOME moves the data dir)."),
    character: Optional[str] = typer.Option(
        None, "--character", metavar="NAME",
        help="Start a new chat with this character (folder or speaking name) instead of resuming."),
    n_ctx: int = typer.Option(DEFAULT_N_CTX, "--n-ctx", metavar="TOKENS", help="Context length for the model."),
    threads: Optional[int] = typer.Option(
        None, "--threads", metavar="N",
        help="CPU threads for generating (default: measured while generating: all cores, or half of them when "
             "that is faster because other programs keep the cores busy)."),
) -> None:
    if characters is None and os.environ.get("HARUHI_CHARACTERS"):
        characters = Path(os.environ["HARUHI_CHARACTERS"])
    if model is not None and not model.expanduser().exists():
        raise HaruhiError(f"model file not found: {model} (pass --model with a .gguf file, or leave it out)")
    if threads is not None and threads < 1:
        raise HaruhiError("--threads must be at least 1")
    if n_ctx < 256:
        raise HaruhiError("--n-ctx must be at least 256 tokens")
    from .app import HaruhiApp

    try:
        tui = HaruhiApp(
            characters_dir=characters, model=model, models_dirs=models_dirs, db_path=db,
            n_ctx=n_ctx, n_threads=threads, character=character,
        )
    except (HaruhiError, OSError):
        raise
    except Exception as exc:
        raise HaruhiError(f"haruhi-tui could not start ({crash.summary(exc)}); "
                          f"{crash.where(crash.record(exc, 'haruhi-tui could not start'))}") from None
    run(tui)


def run(tui: "HaruhiApp", **options: Any) -> None:
    """Run the app; after a crash, a HaruhiError with the one line that names the log (exit code 1)."""
    tui.run(**options)
    if tui.return_code:
        raise HaruhiError(tui.crash_message or f"haruhi-tui ended with exit code {tui.return_code}")


def main(argv: list[str] | None = None) -> None:  # console entry point
    app(args=argv, prog_name="haruhi-tui")


if __name__ == "__main__":
    main()
