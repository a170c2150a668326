"""Entry point of ``haruhi-convert``: merge a LoRA adapter into its base and write a GGUF for llama.cpp."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from haruhi_tui.core.cli_style import cli_app
from haruhi_tui.core.errors import HaruhiError, friendly_errors

HELP = """Merge a LoRA adapter into its base model and write one GGUF that llama.cpp runs
(llama-cpp-python, Ollama, LM Studio), or convert a base model without an adapter.

\b
Examples:
  haruhi-convert -b gpt-oss-20b/ -a runs/haruhi/adapter/ -o haruhi.gguf
  haruhi-convert -b gpt-oss-20b/ -a runs/haruhi/adapter/ -o haruhi.gguf \\
      --type q8_0 --verify
  haruhi-convert -b gemma-3-270m-hf/ -o gemma.gguf --type bf16
  haruhi-convert -b gpt-oss-20b/ -a runs/haruhi/adapter/ --adapter-only \\
      -o haruhi-lora.gguf

Architectures: gpt-oss (GptOssForCausalLM; bf16 or the original MXFP4 checkpoint), Gemma 3,
Llama, Qwen2, Qwen3. The adapter is a PEFT LoRA folder; for gpt-oss it may target attention
(q/k/v/o) and the 3-D expert weights (target_parameters). Tensors are merged and written one at a
time, so memory stays about 1 GB whatever the model size. The output appears only when complete.

--adapter-only writes a GGUF LoRA adapter instead (llama.cpp --lora / Llama(lora_path=...)), on top
of a GGUF of the same base. llama.cpp applies LoRA to gpt-oss experts too (per selected expert), so
attention and expert LoRA both export; adapters with full module copies (modules_to_save),
embedding LoRA or LoRA biases must be merged instead.
"""

TYPE_HELP = (
    "auto: mxfp4 for gpt-oss, q8_0 otherwise. f32/bf16/f16: unquantized. q8_0: 8-bit everywhere. "
    "mxfp4 (gpt-oss): experts in MXFP4 as OpenAI ships them, other matrices q8_0. q4_k_m: llama.cpp's "
    "4-bit K-quant mix (quantized by llama.cpp from a bf16 intermediate). With --adapter-only: f16 (default), bf16, "
    "f32."
)

app = cli_app(help=HELP)
console = Console(stderr=True)


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


@app.command(help=HELP)
def convert_command(
    base: Path = typer.Option(..., "--base", "-b",
                              help="Hugging Face model folder: config.json, *.safetensors, tokenizer.json."),
    out: Path = typer.Option(..., "--out", "-o", help="The GGUF file to write (replaced atomically if it exists)."),
    adapter: Optional[Path] = typer.Option(
        None, "--adapter", "-a", help="PEFT LoRA adapter folder to merge (leave out to convert the base alone)."),
    out_type: str = typer.Option("auto", "--type", "-t", help=TYPE_HELP),
    adapter_only: bool = typer.Option(False, "--adapter-only",
                                      help="Write the LoRA as a GGUF adapter instead of merging it."),
    verify: bool = typer.Option(
        False, "--verify", help="Afterwards run the same tokens through the GGUF (llama.cpp) and the merged model "
        "(transformers) and compare logits; fails if they disagree beyond what --type explains."),
    base_gguf: Optional[Path] = typer.Option(
        None, "--base-gguf", help="With --adapter-only --verify: a GGUF of the base to apply the adapter to."),
    name: Optional[str] = typer.Option(
        None, "--name", help="general.name stored in the GGUF (default: the adapter's or model's folder name)."),
    events: Optional[Path] = typer.Option(
        None, "--events", help="Folder to append progress events (events.jsonl) to, for the TUI launcher."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for merging/quantizing (default: all)."),
) -> None:
    from haruhi_tui.core.events import EventLog

    from .pipeline import ConvertOptions, convert

    log = EventLog(events, "convert", enabled=events is not None) if events is not None else None
    opts = ConvertOptions(base=base, out=out, adapter=adapter, out_type=out_type, adapter_only=adapter_only,
                          name=name, threads=threads)
    config = {"base": str(base), "adapter": str(adapter) if adapter else None, "out": str(out), "type": out_type,
              "adapter_only": adapter_only, "verify": verify}
    if log:
        log.start(config, None, "tensor")
    started_at = [None]
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[tensor]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=console, transient=False,
                      disable=not console.is_terminal and os.environ.get("HARUHI_PROGRESS") != "1") as bar:
            task = bar.add_task("writing tensors", total=None, tensor="")

            def progress(tensor: str, done: int, total: int) -> None:
                import time

                bar.update(task, completed=done, total=total, tensor=tensor)
                if log:
                    now = time.time()
                    if started_at[0] is None:
                        started_at[0] = now
                    elapsed = max(now - started_at[0], 1e-6)
                    rate = done / elapsed
                    log.emit("progress", done=done, total=total, rate=round(rate, 3), unit="tensor",
                             elapsed=round(elapsed, 2), eta=round((total - done) / rate, 1) if rate else None)

            summary = convert(opts, progress=progress, log=lambda m: console.print(m))
        report = None
        if verify:
            from .verify import verify_gguf

            console.print("verifying: llama.cpp vs transformers on the same tokens …")
            report = verify_gguf(summary.output, base, adapter, summary.out_type, adapter_only=adapter_only,
                                 base_gguf=base_gguf)
        _print_summary(summary, report)
        if report is not None and not report.ok:
            if log:
                log.error(report.failure(), kind="verify")
            raise HaruhiError(report.failure())
        if log:
            metrics = summary.as_dict()
            if report is not None:
                metrics["verify"] = report.as_dict()
            log.end("completed", metrics, {"gguf": str(summary.output)})
    except KeyboardInterrupt:
        if log:
            log.end("cancelled")
        raise
    except HaruhiError as exc:
        if log:
            log.error(str(exc))
            log.end("failed")
        raise


def _print_summary(summary, report) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("written", str(summary.output))
    table.add_row("architecture", summary.architecture)
    table.add_row("type", summary.out_type)
    types = ", ".join(f"{k} {v}" for k, v in sorted(summary.types.items()))
    table.add_row("tensors", f"{summary.tensors} ({types})")
    table.add_row("size", _fmt_bytes(summary.size_bytes))
    if summary.merged_targets:
        done = "exported" if summary.out_type.startswith("lora") else "merged"
        table.add_row("LoRA", f"{summary.merged_targets} weights {done}")
    table.add_row("time", f"{summary.seconds:.1f} s")
    table.add_row("peak memory", _fmt_bytes(summary.peak_rss_bytes))
    for note in summary.notes:
        table.add_row("note", note)
    if report is not None:
        table.add_row("verify", report.line())
    console.print(table)


@friendly_errors
def main() -> None:
    """Console entry point: Typer parses; user errors become one line, Ctrl-C exits 130."""
    import signal

    import click

    def terminated(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)  # `kill` cleans up like Ctrl-C: no partial output, no temp file
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background (SIGINT ignored)
    try:
        result = app(standalone_mode=False)
    except click.exceptions.Abort:
        raise KeyboardInterrupt from None
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    if result == 130:  # Typer reports Ctrl-C as an exit code when not standalone
        raise KeyboardInterrupt
    if isinstance(result, int) and result:
        raise SystemExit(result)


if __name__ == "__main__":
    main()
