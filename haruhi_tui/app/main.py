"""Entry point of ``haruhi-tui``: parse the command line, then run the app."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from haruhi_tui.core.engine import DEFAULT_N_CTX
from haruhi_tui.core.errors import HaruhiError, friendly_errors
from haruhi_tui.core.paths import default_characters_dir, models_dir


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
                   help=f"ChatHaruhi characters folder ($HARUHI_CHARACTERS; default {default_characters_dir()})")
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
                   help="CPU threads for generating (default: measured while generating: all cores, or half of "
                        "them when that is faster because other programs keep the cores busy)")
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

    app = HaruhiApp(
        characters_dir=args.characters, model=args.model, models_dirs=args.models_dir, db_path=args.db,
        n_ctx=args.n_ctx, n_threads=args.threads, character=args.character,
    )
    app.run()


if __name__ == "__main__":
    main()
