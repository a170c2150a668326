"""The ``haruhi eval`` commands (registered on the main ``haruhi`` app).

``haruhi eval --model …`` runs an evaluation (the group's own action); ``haruhi eval compare`` and
``haruhi eval score`` work on finished runs. Heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from haruhi_tui.core.cli_style import cli_app
from haruhi_tui.core.errors import HaruhiError, friendly_errors

EVAL_HELP = (
    "BLEU-4 / ROUGE of a model's replies on haruhi_val, scored exactly like LLaMA-Factory.\n\n"
    "Run: haruhi eval --model MODEL [--adapter DIR] --dataset data/haruhi_val.json --out runs/NAME\n\n"
    "MODEL is a .gguf file (llama.cpp: CPU, or GPU with a CUDA build) or a Hugging Face model folder "
    "(transformers, batched on the GPU); --adapter adds a LoRA adapter from `haruhi train` to a folder model. "
    "Each prompt is the sample's system prompt and history in the model's own style (harmony for gpt-oss, "
    "its chat template, or a play script for a base model); the sample's last reply is the reference.\n\n"
    "Writes OUT/generated_predictions.jsonl as it goes (LLaMA-Factory's prompt/predict/label, plus character "
    "and the raw output) and OUT/metrics.json (predict_bleu-4, predict_rouge-1/2/l, predict_runtime, "
    "predict_samples_per_second, ..., per_character, and how it was scored). Interrupted? Run the same command "
    "again: finished predictions are kept and only the rest is predicted. Ctrl-C writes metrics for what was "
    "done.\n\n"
    "Then: `haruhi eval compare runs/base runs/ft` (side by side, per character, with the reference numbers) "
    "and `haruhi eval score FILE --out DIR` (re-score a predictions file, also one LLaMA-Factory wrote)."
)


def _default_out(model: Path, adapter: Optional[Path]) -> Path:
    name = model.stem if model.is_file() else model.name
    if adapter is not None:
        name += "-" + adapter.name
    return Path("runs") / f"eval-{name or 'model'}"


def register(app: typer.Typer) -> None:
    """Attach ``eval`` to the ``haruhi`` app."""
    eval_app = cli_app(help=EVAL_HELP, invoke_without_command=True)
    app.add_typer(eval_app, name="eval")

    @eval_app.callback(invoke_without_command=True)
    @friendly_errors
    def eval_run(
        ctx: typer.Context,
        model: Optional[Path] = typer.Option(
            None, "--model", "-m", help="A .gguf file, or a Hugging Face model folder (base model for --adapter)."),
        adapter: Optional[Path] = typer.Option(
            None, "--adapter", "-a", help="LoRA adapter folder (from `haruhi train`) on top of a folder --model."),
        dataset: str = typer.Option(
            "data/haruhi_val.json", "--dataset", "-d",
            help="ShareGPT file whose last turn in each sample is the reference, or DATASET_INFO_DIR:NAME."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder. Default: runs/eval-<model name>."),
        lf_raw: bool = typer.Option(
            False, "--lf-raw",
            help="Score like LLaMA-Factory: special tokens stripped from the whole output (channel words and analysis "
                 "stay in), label with its template's empty-thought header. Default: final-channel speech only."),
        sampling: str = typer.Option(
            "greedy", "--sampling",
            help="'greedy' (reproducible) or 'lf' (LLaMA-Factory's defaults: temperature 0.95, top_p 0.7, top_k 50)."),
        max_new_tokens: int = typer.Option(
            1024, "--max-new-tokens",
            help="Most tokens generated per reply (LLaMA-Factory's default is 1024; analysis counts)."),
        limit: Optional[int] = typer.Option(
            None, "--limit", help="Evaluate only the first N (selected) samples: a quick look."),
        sample: Optional[int] = typer.Option(
            None, "--sample",
            help="Evaluate N samples drawn per character in proportion (stratified, fixed by --seed)."),
        seed: int = typer.Option(42, "--seed", help="Seed of --sample and of --sampling lf."),
        batch_size: Optional[int] = typer.Option(
            None, "--batch-size", "-b",
            help="Prompts generated at once (transformers: sequences in flight, auto on GPU from free memory; "
                 "llama.cpp: parallel sequences, default 4)."),
        device: Optional[str] = typer.Option(
            None, "--device", help="transformers device (cuda, cuda:1, cpu). Default: cuda if available."),
        dtype: Optional[str] = typer.Option(
            None, "--dtype", help="transformers weights dtype: bf16 (GPU default), fp16 or fp32 (CPU default)."),
        gpu_layers: int = typer.Option(
            -1, "--gpu-layers", help="llama.cpp layers offloaded to the GPU (-1: all, 0: CPU only)."),
        restart: bool = typer.Option(False, "--restart", help="Discard predictions already in --out and start over."),
        prefix_sharing: bool = typer.Option(
            True, "--prefix-sharing/--no-prefix-sharing",
            help="Compute the start that prompts share (a character's persona, a scene so far) once and reuse it."),
        cuda_graphs: bool = typer.Option(
            True, "--cuda-graphs/--no-cuda-graphs",
            help="transformers on a GPU: replay decode steps from CUDA graphs (less launch overhead)."),
        engine: str = typer.Option(
            "auto", "--engine",
            help="transformers engine: 'continuous' (shared prefixes, no padding), 'batched' (left-padded batches) "
                 "or 'auto' (continuous for gpt-oss and Gemma 3, batched for other models)."),
    ) -> None:
        if ctx.invoked_subcommand is not None:
            return
        if model is None:
            typer.echo(ctx.get_help())
            raise typer.Exit(0)
        _run(model, adapter, dataset, out, lf_raw, sampling, max_new_tokens, limit, sample, seed, batch_size, device,
             dtype, gpu_layers, restart, prefix_sharing, cuda_graphs, engine)

    @eval_app.command("compare")
    @friendly_errors
    def eval_compare(
        runs: list[Path] = typer.Argument(..., help="Run folders (each with metrics.json), e.g. runs/base runs/ft."),
        name: list[str] = typer.Option(
            [], "--name", "-n", help="Column name per run, in order (default: the folder names)."),
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="Where comparison.md and comparison.json go. Default: the runs' parent folder."),
    ) -> None:
        """Side-by-side table, overall and per character, with the reference walk-through's numbers."""
        from rich.console import Console

        from .compare import comparison, print_comparison, write_comparison

        data = comparison([str(r) for r in runs], name or None)
        print_comparison(data, Console())
        target = out or Path(runs[0]).resolve().parent
        md, js = write_comparison(data, target)
        Console(stderr=True).print(f"wrote {md} and {js}")

    @eval_app.command("score")
    @friendly_errors
    def eval_score(
        predictions: Path = typer.Argument(
            ..., help="generated_predictions.jsonl (ours or LLaMA-Factory's), or a run folder."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for the recomputed metrics.json."),
        mode: Optional[str] = typer.Option(
            None, "--mode",
            help="Default: score predict/label as written. 'final': speech only (from our raw output, or "
                 "LLaMA-Factory text after its last 'assistantfinal'); 'lf-raw': LLaMA-Factory's way from our raw "
                 "output."),
    ) -> None:
        """Recompute metrics.json from a predictions file alone, without generating again."""
        from .evaluate import score_file

        if mode not in (None, "final", "lf-raw"):
            raise HaruhiError(f"--mode is 'final' or 'lf-raw', not {mode!r}")
        metrics = score_file(predictions, out, mode=mode)  # type: ignore[arg-type]
        _print_metrics(metrics, Path(out) / "metrics.json")


def _run(model: Path, adapter: Optional[Path], dataset: str, out: Optional[Path], lf_raw: bool, sampling: str,
         max_new_tokens: int, limit: Optional[int], sample: Optional[int], seed: int, batch_size: Optional[int],
         device: Optional[str], dtype: Optional[str], gpu_layers: int, restart: bool, prefix_sharing: bool = True,
         cuda_graphs: bool = True, engine: str = "auto") -> None:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if model is not None and model.suffix == ".gguf":
        import haruhi_tui.core.engine  # noqa: F401  (loads llama.cpp before numpy: see its imports)
    from .evaluate import EvalConfig, Evaluation
    from .generation.decoding import SAMPLINGS, DecodingOptions
    from .generation.loader import load_generator

    if sampling not in SAMPLINGS:
        raise HaruhiError(f"--sampling is 'greedy' or 'lf', not {sampling!r}")
    counts = (("--max-new-tokens", max_new_tokens), ("--limit", limit), ("--sample", sample),
              ("--batch-size", batch_size))
    for flag, value in counts:
        if value is not None and value < 1:
            raise HaruhiError(f"{flag} must be at least 1, not {value}")
    config = EvalConfig(
        model=str(model), adapter=str(adapter) if adapter else None, dataset=dataset,
        out=out or _default_out(model, adapter), scoring="lf-raw" if lf_raw else "final",
        decoding=DecodingOptions(sampling=sampling, max_new_tokens=max_new_tokens, seed=seed),  # type: ignore[arg-type]
        limit=limit, sample=sample, seed=seed, batch_size=batch_size, device=device, dtype=dtype, restart=restart,
    )
    err = Console(stderr=True)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                        TimeElapsedColumn(), console=err, transient=False)
    task = progress.add_task("starting", total=None, rate="")

    def on_progress(done: int, total: int, rate: float) -> None:
        progress.update(task, description="predicting", completed=done, total=total, rate=f"{rate:.2f} samples/s")

    def on_status(message: str) -> None:
        progress.update(task, description=message)

    def factory():
        return load_generator(model, adapter, device=device, dtype=dtype, batch_size=batch_size,
                              n_gpu_layers=gpu_layers, share_prefixes=prefix_sharing, cuda_graphs=cuda_graphs,
                              engine=engine)

    evaluation = Evaluation(config, generator_factory=factory, on_progress=on_progress, on_status=on_status)
    with progress:
        result = evaluation.run()
    _print_metrics(result.metrics, result.metrics_path)
    err.print(f"predictions: {result.predictions} ({result.predicted} new this run, {result.total} in all)")


def _print_metrics(metrics: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{path} — {metrics.get('samples')} samples, scoring {metrics.get('scoring')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if key.startswith("predict_"):
            table.add_row(key, "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
