"""``haruhi``: the command line for everything but the chat app and the converter.

Subcommands: ``chat`` (talk to a character in the shell), ``data`` (build and check datasets), ``train``
(LoRA fine-tune), ``eval`` (BLEU/ROUGE), ``models`` (find and download models), ``characters`` (the character
library: list, get, import, export, remove), ``personas`` (who you play). Heavy libraries are imported inside
commands, so ``--help`` is instant.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from haruhi_tui.core.cli_style import cli_app
from haruhi_tui.core.errors import HaruhiError, friendly_errors

app = cli_app(
    name="haruhi",
    help="Character role-play on gpt-oss-20b: chat in the shell, build datasets, fine-tune, evaluate. The chat app "
    "is `haruhi-tui`; GGUF export is `haruhi-convert`.",
    no_args_is_help=True,
)
data_app = cli_app(help="Build role-play datasets from ChatHaruhi character folders, and check datasets.",
                   no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)


def _parse_speakers(values: list[str]) -> dict[str, str]:
    speakers: dict[str, str] = {}
    for value in values:
        folder, sep, name = value.partition("=")
        if not sep or not folder or not name:
            raise HaruhiError(f"--speaker takes FOLDER=NAME (e.g. Megumi=加藤), not {value!r}")
        speakers[folder] = name
    return speakers


@data_app.command("build")
@friendly_errors
def data_build(
    characters: Path = typer.Option(
        None, "--characters", "-c", help="Build from this folder of ChatHaruhi character folders only (each: "
        "system_prompt.txt + texts/*.txt). Default: the character library (the bundled starters, characters you "
        "downloaded or imported, $HARUHI_CHARACTERS); `haruhi characters list` shows it."),
    out: Path = typer.Option(Path("data"), "--out", "-o", help="Output folder for haruhi_train.json, "
                             "haruhi_val.json, dataset_info.json, stats.json (replaced together)."),
    seed: int = typer.Option(42, help="Seed of the per-character train/val split by scene (same seed, same files)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of each character's scenes that go to "
                                       "validation (scenes that share dialogue stay in one split)."),
    only: list[str] = typer.Option([], "--only", help="Build only these characters (folder or speaking name); "
                                   "repeatable."),
    speaker: list[str] = typer.Option([], "--speaker", help="FOLDER=NAME where the speaking name cannot be "
                                      "detected (e.g. Megumi=加藤); repeatable."),
    max_turns: int = typer.Option(16, "--max-turns", help="Most turns in one sample (longer scenes are split)."),
    train_unit: str = typer.Option("scene", "--train-unit", help="'scene': one multi-turn sample per scene window "
                                   "(each line trained once); 'reply': one sample per reply."),
    scene_budget: int = typer.Option(1200, "--scene-budget", help="Token budget of the retrieved classic scenes in "
                                     "each system prompt."),
    max_scenes: int = typer.Option(4, "--max-scenes", help="Most classic scenes in a system prompt."),
    history_budget: int = typer.Option(1500, "--history-budget", help="Token budget of the conversation history in "
                                       "a sample."),
    extra: list[Path] = typer.Option([], "--extra", help="ShareGPT files to merge into the training split (e.g. "
                                     "chats exported from haruhi-tui); repeatable."),
) -> None:
    """Build haruhi_train / haruhi_val (ShareGPT) and LLaMA-Factory's dataset_info.json."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from haruhi_tui.core.characters import list_character_folders
    from haruhi_tui.core.dataset import BuildOptions, build, write
    from haruhi_tui.core.persona import PromptBudget
    from haruhi_tui.core.scene_split import MIN_SHARED_CHARS
    from haruhi_tui.services.character_library import CharacterLibrary

    if train_unit not in ("scene", "reply"):
        raise HaruhiError(f"--train-unit is 'scene' or 'reply', not {train_unit!r}")
    source: Path | list
    if characters is not None:
        source, root = characters, str(characters)
        total = len(list_character_folders(characters)) if not only else len(only)
    else:
        library = CharacterLibrary()
        if library.problems:
            raise HaruhiError(library.problems[0])
        source, root = library.select(only or None, _parse_speakers(speaker)), "the character library"
        total = len(source)
    options = BuildOptions(
        seed=seed, val_fraction=val_fraction, max_turns=max_turns, train_unit=train_unit,  # type: ignore[arg-type]
        budget=PromptBudget(scenes=scene_budget, max_scenes=max_scenes, history=history_budget),
    )
    with Progress(TextColumn("[bold]building[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("", total=total)
        result = build(source, options, only=only or None, speakers=_parse_speakers(speaker), extra=extra,
                       progress=lambda ch: progress.update(task, advance=1, description=escape(ch.name)))
    paths = write(result, out)
    overlap = result.overlap
    leaks = ", ".join(f"{escape(s.name)} {s.val_replies_in_train}" for s in result.stats if s.val_replies_in_train)
    caption = (f"validation replies of {MIN_SHARED_CHARS}+ characters also in training: {overlap.replies:,} of "
               f"{overlap.checked:,} ({overlap.percent:.2f} %)" + (f": {leaks}" if leaks else ""))
    out_console = Console()
    out_console.print(_stats_table(result, escape(f"haruhi dataset ({root})"), caption))
    for s in result.stats:
        for warning in s.warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}")
    if result.extra_samples:
        out_console.print(f"merged {result.extra_samples} extra samples into the training split")
    folder = Path(next(iter(paths.values()))).parent
    out_console.print(f"train {len(result.train):,} samples, val {len(result.val):,} samples → {escape(str(folder))}: "
                      + ", ".join(escape(Path(p).name) for p in paths.values()))


def _stats_table(result, title: str, caption: str) -> Table:
    """Per character: scenes (skipped), the train/val split of scenes and samples, turns and characters of text;
    narrow enough for an 80-column terminal (train/val share a column)."""
    from rich import box
    from rich.markup import escape

    stats = result.stats

    def pair(train: int, val: int) -> str:
        return f"{train:,}/{val:,}"

    table = Table(title=title, caption=caption, show_footer=True, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("character", footer="total", overflow="fold", min_width=17)
    table.add_column("scenes", footer=f"{sum(s.scenes for s in stats):,}", justify="right", no_wrap=True)
    table.add_column("skipped", footer=f"{sum(s.skipped_scenes for s in stats):,}", justify="right", no_wrap=True)
    table.add_column("scenes\ntrain/val", justify="right", no_wrap=True,
                     footer=pair(sum(s.train_scenes for s in stats), sum(s.val_scenes for s in stats)))
    table.add_column("samples\ntrain/val", justify="right", no_wrap=True,
                     footer=pair(sum(s.train_samples for s in stats), sum(s.val_samples for s in stats)))
    table.add_column("turns", footer=f"{sum(s.turns for s in stats):,}", justify="right", no_wrap=True)
    table.add_column("chars", footer=f"{sum(s.text_chars for s in stats):,}", justify="right", no_wrap=True)
    for s in stats:
        who = escape(s.name) if s.name == s.folder else f"{escape(s.name)} [dim]{escape(s.folder)}[/]"
        table.add_row(who, f"{s.scenes:,}", f"{s.skipped_scenes:,}", pair(s.train_scenes, s.val_scenes),
                      pair(s.train_samples, s.val_samples), f"{s.turns:,}", f"{s.text_chars:,}")
    return table


@data_app.command("check")
@friendly_errors
def data_check(
    dataset: str = typer.Argument(..., help="A ShareGPT .json/.jsonl file, or DATASET_INFO_DIR:NAME (LLaMA-Factory)."),
) -> None:
    """Validate a dataset the trainer or evaluator would read; errors name the sample and the problem."""
    from haruhi_tui.core.sharegpt import resolve_dataset

    samples = resolve_dataset(dataset)
    turns = sum(len(s.messages) for s in samples)
    with_system = sum(1 for s in samples if s.system)
    Console().print(f"{dataset}: {len(samples):,} valid samples, {turns:,} turns, {with_system:,} with a system prompt")


def _register_optional() -> None:
    """Attach the training, evaluation, model and character commands (they live in their own modules)."""
    from trainer.cli import register as register_trainer
    from trainer.eval_cli import register as register_eval

    from .characters import register as register_characters
    from .chat import register as register_chat
    from .models import register as register_models
    from .personas import register as register_personas

    register_chat(app)
    register_trainer(app)
    register_eval(app)
    register_models(app)
    register_characters(app)
    register_personas(app)


_register_optional()


def main() -> None:  # console entry point
    app()


if __name__ == "__main__":
    main()
