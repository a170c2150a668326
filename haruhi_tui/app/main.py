"""Entry point of ``haruhi-tui``: parse the command line, then run the app."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haruhi_tui.core.engine import DEFAULT_N_CTX
from haruhi_tui.core.errors import HaruhiError, friendly_errors
from haruhi_tui.core.paths import models_dir

from . import crash

if TYPE_CHECKING:
    from .app import HaruhiApp


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="haruhi-tui",
        description=(
            "Chat with a ChatHaruhi character in a full-screen terminal app, on a local GGUF model "
            "(gpt-oss speaks harmony; a base model without a template, like the bundled Gemma 3 270M, "
            "answers as a play script). Chats are saved as you go and resume where you left off."
        ),
        epilog="Keys: Enter sends, Esc stops a reply, ctrl+r regenerates, F2 shows the prompt, F1 lists every key.",
    )
    p.add_argument("--characters", "-c", type=Path, default=None, metavar="DIR",
                   help="your own folder of ChatHaruhi character folders ($HARUHI_CHARACTERS), listed with the "
                        "bundled starters and the characters you downloaded or imported")
    p.add_argument("--model", "-m", type=Path, default=None, metavar="GGUF",
                   help="GGUF model to chat with (default: the last one used, else the bundled Gemma 3 270M)")
    p.add_argument("--models-dir", type=Path, action="append", default=[], metavar="DIR",
                   help=f"another folder of GGUF files for the model picker (always: {models_dir()}); repeatable")
    p.add_argument("--db", type=Path, default=None, metavar="FILE",
                   help="sessions database (default: <data dir>/sessions.db; $HARUHI_HOME moves the data dir)")
    p.add_argument("--character", default=None, metavar="NAME",
                   help="start a new chat with this character (folder or speaking name) instead of resuming")
    p.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX, metavar="TOKENS",
                   help=f"context length for the model (default {DEFAULT_N_CTX})")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for generating (default: all cores but one on a small machine, so the "
                        "screen stays smooth; prompt evaluation always uses every core)")
    return p


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.characters is None and os.environ.get("HARUHI_CHARACTERS"):
        args.characters = Path(os.environ["HARUHI_CHARACTERS"])
    if args.model is not None and not args.model.expanduser().exists():
        raise HaruhiError(f"model file not found: {args.model} (pass --model with a .gguf file, or leave it out)")
    if args.threads is not None and args.threads < 1:
        raise HaruhiError("--threads must be at least 1")
    if args.n_ctx < 256:
        raise HaruhiError("--n-ctx must be at least 256 tokens")
    from .app import HaruhiApp

    try:
        app = HaruhiApp(
            characters_dir=args.characters, model=args.model, models_dirs=args.models_dir, db_path=args.db,
            n_ctx=args.n_ctx, n_threads=args.threads, character=args.character,
        )
    except (HaruhiError, OSError):
        raise
    except Exception as exc:
        raise HaruhiError(f"haruhi-tui could not start ({crash.summary(exc)}); "
                          f"{crash.where(crash.record(exc, 'haruhi-tui could not start'))}") from None
    run(app)


def run(app: "HaruhiApp", **options: Any) -> None:
    """Run the app; after a crash, a HaruhiError with the one line that names the log (exit code 1)."""
    app.run(**options)
    if app.return_code:
        raise HaruhiError(app.crash_message or f"haruhi-tui ended with exit code {app.return_code}")


if __name__ == "__main__":
    main()
