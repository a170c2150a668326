"""The ``haruhi train`` command (registered on the main ``haruhi`` app).

Its recipe flags are generated from :class:`trainer.train_config.TrainConfig`, so the flags, the TOML
file and ``--print-config`` always list the same settings. Heavy imports happen inside the command.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from haruhi_tui.core.errors import HaruhiError, friendly_errors

from . import train_config as tc

HELP = """LoRA fine-tune a model (gpt-oss-20b by default) on a role-play dataset.

The defaults reproduce the reference run: base openai/gpt-oss-20b, LoRA r=16 alpha=32 dropout 0 on
attention (q/k/v/o) and the MoE experts (gate_up_proj, down_proj), lr 1e-4 cosine with 3% warm-up,
3 epochs, 2048-token sequences, 8 rows per optimizer step per GPU (8 x 1, or 4 x 2 and smaller
micro-batches when the card's memory is short; gradient checkpointing only where needed), data/haruhi_train.json
(`haruhi data build -o data/`). Unsloth trains on CUDA (bf16 base; --load-in-4bit for QLoRA);
without CUDA the same recipe runs on transformers + PEFT.

Only the character's replies carry the loss. Writes OUTPUT/events.jsonl (progress), OUTPUT/checkpoint-N
(every --save-steps, at the end and on Ctrl-C) and OUTPUT/adapter (for haruhi-convert --adapter and haruhi
eval --adapter). Ctrl-C saves a checkpoint and stops; --resume continues from it.

Settings come from the defaults, then --config FILE (TOML; --print-config writes one), then the flags
below. Several GPUs: --gpus N; several machines: the Multi-node options on each.

\b
Examples:
  haruhi train                          # the reference recipe
  haruhi train --gpus 8 -o runs/haruhi-8gpu
  haruhi train --base ./gemma-3-270m-hf --epochs 1
  haruhi train --config train.toml --lr 2e-4
  haruhi train --resume -o runs/haruhi-lora
"""

SECTION_PANELS = {"model": "Model", "data": "Data", "lora": "LoRA", "train": "Training", "output": "Output"}


ON, OFF = "__on", "__off"  # suffixes of a switch's two flag parameters (--name, --no-name)


def _option_for(f: Any) -> list[tuple[str, Any, Any]]:
    """(name, annotation, typer.Option) for one recipe setting; default None means 'not given'. An on/off
    setting or an auto/on/off switch gets two flag parameters (``name__on``, ``name__off``; see :func:`_switches`)."""
    default = getattr(tc.TrainConfig(), f.name)
    flag = tc.flag_of(f.name)
    choices = f.metadata.get("choices")
    text = f.metadata["help"]
    if choices and not f.metadata.get("switch"):
        text += f" One of: {', '.join(choices)}."
    panel = SECTION_PANELS[f.metadata["section"]]
    if isinstance(default, bool) or f.metadata.get("switch"):
        # a switch lists the flag a user reaches for and names the other in its help: two long flag names side
        # by side leave no room for the help at 80 columns (both flags work)
        on, off = flag, "--no-" + flag[2:]
        shown, hidden = (off, on) if default is True else (on, off)
        text += f" [default: {str(default).lower() if isinstance(default, bool) else default}; {hidden} " \
                f"turns it {'on' if hidden == on else 'off'}]"
        return [(f.name + (OFF if shown == off else ON), bool,
                 typer.Option(False, shown, help=escape(text), show_default=False, rich_help_panel=panel)),
                (f.name + (ON if shown == off else OFF), bool, typer.Option(False, hidden, hidden=True))]
    shown = ",".join(default) if isinstance(default, list) else str(default)
    text += f" [default: {shown}]"
    kind = {int: int, float: float}.get(type(default), str)
    decls = [flag] + (["-o"] if f.name == "output" else [])
    return [(f.name, Optional[kind], typer.Option(None, *decls, help=escape(text), show_default=False,
                                                  rich_help_panel=panel))]


def _switches(values: dict[str, Any]) -> None:
    """Each switch's two flags back into its setting: True (--name), False (--no-name), None (neither given)."""
    for f in tc.settings():
        if f.name + ON in values:
            on, off = values.pop(f.name + ON), values.pop(f.name + OFF)
            if on and off:
                raise HaruhiError(f"{tc.flag_of(f.name)} and --no-{tc.flag_of(f.name)[2:]} together: give one")
            values[f.name] = True if on else (False if off else None)


CONTROL_PARAMETERS: list[tuple[str, Any, Any]] = [
    ("config", Optional[Path], typer.Option(None, "--config", "-c", help="TOML file with settings (flags override it).",
                                            rich_help_panel="Run")),
    ("print_config", bool, typer.Option(False, "--print-config", help="Print the resolved settings as TOML and exit.",
                                        rich_help_panel="Run")),
    ("resume", bool, typer.Option(False, "--resume", help="Continue the run in --output from its last checkpoint "
                                  "(step count, learning-rate schedule, data order and events.jsonl continue).",
                                  rich_help_panel="Run")),
    ("gpus", Optional[int], typer.Option(None, "--gpus", help="Data-parallel processes on this machine, one per GPU "
                                         "(default: one process, one GPU or the CPU).", rich_help_panel="Run")),
    ("cpu_processes", bool, typer.Option(False, "--cpu-processes", help="With --gpus N: run N CPU processes (gloo) "
                                         "instead of GPUs, to test the distributed path.", rich_help_panel="Run")),
    ("nnodes", int, typer.Option(1, "--nnodes", help="Machines in a multi-node run.", rich_help_panel="Multi-node")),
    ("node_rank", int, typer.Option(0, "--node-rank", help="This machine's index, 0..nnodes-1.",
                                    rich_help_panel="Multi-node")),
    ("master_addr", str, typer.Option("127.0.0.1", "--master-addr", help="Address of node 0.",
                                      rich_help_panel="Multi-node")),
    ("master_port", int, typer.Option(29500, "--master-port", help="A free port on node 0.",
                                      rich_help_panel="Multi-node")),
]


def _notes(config: tc.TrainConfig) -> dict[str, str]:
    """What the 'auto' settings resolve to on this machine (shown by --print-config)."""
    from .engines import cuda_count, unsloth_available

    device = "cuda" if config.device == "cuda" or (config.device == "auto" and cuda_count()) else "cpu"
    notes = {}
    if config.device == "auto":
        notes["device"] = f"here: {device}"
    if config.engine == "auto":
        notes["engine"] = "here: " + ("unsloth" if device == "cuda" and unsloth_available() else "hf")
    if config.dtype == "auto":
        notes["dtype"] = "here: " + ("bfloat16" if device == "cuda" else "float32")
    return notes


def train_command(**values: Any) -> None:
    from rich.console import Console

    control = {name: values.pop(name) for name, _, _ in CONTROL_PARAMETERS}
    _switches(values)
    flags = {name: value for name, value in values.items() if value is not None}
    file_values = tc.load_toml(control["config"]) if control["config"] else {}
    if control["resume"]:
        from .train_loop import resume_config

        config = resume_config(file_values, flags)
    else:
        config = tc.resolve(file_values, flags)
    if control["print_config"]:
        typer.echo(tc.to_toml(config, _notes(config)), nl=False)
        return
    gpus, cpu = control["gpus"], control["cpu_processes"]
    if cpu and not gpus:
        raise HaruhiError("--cpu-processes needs --gpus N (how many CPU processes)")
    if gpus is not None and gpus < 1:
        raise HaruhiError(f"--gpus must be at least 1, not {gpus}")
    from .launch import check_gpu_count, launch, summary_line
    from .progress import TrainProgress
    from .train_loop import check_output, run_training

    if control["node_rank"] == 0:
        check_output(config, control["resume"])
    progress = TrainProgress()
    distributed = (gpus or 1) > 1 or control["nnodes"] > 1 or cpu
    if distributed:
        result = launch(config, nproc=gpus or 1, cpu=cpu, resume=control["resume"], nnodes=control["nnodes"],
                        node_rank=control["node_rank"], master_addr=control["master_addr"],
                        master_port=control["master_port"], progress=progress)
    else:
        if gpus == 1:
            check_gpu_count(1)
            config.device = "cuda"
        result = run_training(config, resume=control["resume"], sink=progress)
    Console().print(summary_line(result), highlight=False)


def _build_command():
    parameters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
                  for name, annotation, option in CONTROL_PARAMETERS]
    for f in tc.settings():
        for name, annotation, option in _option_for(f):
            parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                                annotation=annotation))

    @friendly_errors
    def train(**values: Any) -> None:
        train_command(**values)

    train.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    train.__annotations__ = {p.name: p.annotation for p in parameters}
    train.__doc__ = HELP
    return train


def register(app: typer.Typer) -> None:
    """Attach ``train`` to the ``haruhi`` app."""
    app.command("train", help=HELP, no_args_is_help=False)(_build_command())
