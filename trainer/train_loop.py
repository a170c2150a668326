"""One training run, the same for both engines: data -> batches -> transformers' Trainer -> adapter.

The engine (:mod:`trainer.engines`) only loads the model and wraps it with LoRA. The rest of a run is
here: prompts and label masks (:mod:`trainer.train_data`), the batch plan, Ctrl-C/SIGTERM handling,
checkpoints, resume, the final adapter and the start/error/end events. The Trainer's own pieces (the loss,
per-step events) are in :mod:`trainer.hf_trainer`, imported once a run starts; the state both share is in
:mod:`trainer.run_state`.

* Checkpoints are the Trainer's (``<output>/checkpoint-N``: adapter, optimizer, scheduler, RNG, state)
  plus a marker written once the save is complete; resume takes the newest checkpoint with a marker,
  so a kill -9 in the middle of a save falls back to the one before.
* SIGINT/SIGTERM during training finish the step in flight, save a checkpoint and end the run with
  status ``cancelled``; a second signal stops at once. Before training starts they stop at once.
* In a distributed run every rank trains, only rank 0 writes events, checkpoints and the adapter, and a
  stop request on any rank is shared with all of them at the end of the step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from haruhi_tui.core.errors import Cancelled, HaruhiError
from haruhi_tui.core.events import EVENTS_FILE, EventLog
from haruhi_tui.core.fsutil import read_json, write_json

from . import throughput
from . import train_config as tc
from .batch_plan import BatchPlan, PlannedBatches, plan_batches, unwrap_batch
from .engines import (
    LoadedModel,
    Placement,
    engine_for,
    load_tokenizer,
    model_type,
    resolve_base,
    resolve_device,
    resolve_engine,
)
from .run_state import (
    CHECKPOINT_MARKER,
    CHECKPOINT_PREFIX,
    JOB,
    GracefulStop,
    Run,
    RunResult,
    finite_number,
    gpu_memory_gb,
    latest_checkpoint,
)
from .step_layout import Layout, resolve_layout
from .train_data import DataStats, Encoded, PromptRenderer, encode_samples

if TYPE_CHECKING:
    from .progress import TrainProgress

ADAPTER_DIR = "adapter"
ADAPTER_INFO = "haruhi_adapter.json"


# -- output folder ----------------------------------------------------------------------------------

def check_output(config: tc.TrainConfig, resume: bool) -> None:
    """Refuse to start a new run on top of an old one (it would mix two runs' checkpoints and events)."""
    out = config.output_dir
    if out.exists() and not out.is_dir():
        raise HaruhiError(f"--output {out} is a file; choose a folder")
    if resume or not out.is_dir():
        return
    traces = [p.name for p in (out / EVENTS_FILE, out / ADAPTER_DIR) if p.exists()]
    traces += [p.name for p in out.glob(CHECKPOINT_PREFIX + "*")]
    if traces:
        raise HaruhiError(f"{out} already holds a training run ({', '.join(sorted(traces)[:3])}); pass --resume to "
                          "continue it, or choose another --output")


def resume_config(config_values: dict[str, Any], flag_values: dict[str, Any]) -> tc.TrainConfig:
    """The config of a run being resumed: the saved one, with the given file/flag values on top; settings
    that fix the data order or the model state must not change."""
    output = Path(flag_values.get("output") or config_values.get("output") or tc.TrainConfig().output)
    saved_path = output / tc.CONFIG_FILE
    if not saved_path.is_file():
        return tc.resolve(config_values, flag_values)
    saved = tc.resolve(tc.load_toml(saved_path))
    merged = tc.resolve(config_values, flag_values, base=saved)
    changed = [k for k in tc.RESUME_LOCKED if getattr(merged, k) != getattr(saved, k)]
    if changed:
        key = changed[0]
        raise HaruhiError(f"cannot resume {output} with a different {tc.flag_of(key)} ({getattr(saved, key)!r} -> "
                          f"{getattr(merged, key)!r}); keep it, or start a new run in another --output")
    return merged


# -- the run ----------------------------------------------------------------------------------------

def steps_per_epoch(plan: BatchPlan, config: tc.TrainConfig) -> int:
    """Optimizer steps in one epoch: every process trains one batch of every round."""
    return max(1, math.ceil(len(plan.rounds) / config.grad_accum))


def steps_for(plan: BatchPlan, config: tc.TrainConfig) -> int:
    """Optimizer steps of the run, as the Trainer counts them."""
    per_epoch = steps_per_epoch(plan, config)
    return config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * per_epoch)


def prepare_sequences(config: tc.TrainConfig, tokenizer: Any, style: str,
                      samples: Sequence | None = None) -> tuple[list[Encoded], DataStats]:
    """The dataset (or ``samples``) rendered, tokenized and fitted to ``max_length``."""
    from haruhi_tui.core.sharegpt import resolve_dataset

    if samples is None:
        samples = resolve_dataset(config.dataset)
    if config.max_samples:
        samples = samples[:config.max_samples]
    # auto is our renderer: the fine-tune then sees in training the very prompt the chat app and eval send it
    renderer = PromptRenderer(tokenizer, style, use_template=config.template == "model",  # type: ignore[arg-type]
                              reasoning_effort=config.reasoning_effort)
    return encode_samples(samples, renderer, config.max_length)


def sequence_stats(sequences: Sequence[Encoded]) -> DataStats:
    """Figures for sequences made elsewhere (benchmarks)."""
    return DataStats(samples=len(sequences), sequences=len(sequences), tokens=sum(len(s) for s in sequences),
                     trainable_tokens=sum(s.trainable for s in sequences),
                     longest=max((len(s) for s in sequences), default=0))


def previous_resolved(output: Path) -> dict[str, Any]:
    """What the run being resumed resolved at its last start (packing, step layout, process count: its data
    order depends on them)."""
    from haruhi_tui.core.events import read_events

    resolved: dict[str, Any] = {}
    for record in read_events(output)[0]:
        if record["event"] == "start":
            resolved = ((record.get("config") or {}).get("resolved") or {}) or resolved
    return resolved


def speed_key(config: tc.TrainConfig, resolved: dict[str, Any], sequences: int, card: str) -> str:
    """What decides this run's tokens/s per device, for the one-device reference (trainer.throughput)."""
    dataset = Path(config.dataset)
    return throughput.speed_key(
        model=resolved["base_dir"], engine=resolved["engine"], packing=resolved["packing"], card=card,
        layout=[config.batch_size, config.grad_accum, config.gradient_checkpointing], max_length=config.max_length,
        lora=[config.lora_r, config.lora_targets], dtype=config.dtype, four_bit=config.load_in_4bit,
        dataset=str(dataset.resolve()) if dataset.exists() else config.dataset, sequences=sequences)


def _emit_start(run: Run, config: tc.TrainConfig, resolved: dict[str, Any], checkpoint: tuple[int, Path] | None,
                job_pid: int | None) -> None:
    run.events.emit("start", config={**config.to_dict(), "resolved": resolved}, total=run.total_steps, unit="step",
                    pid=job_pid or int(os.environ.get("HARUHI_JOB_PID", 0) or os.getpid()),
                    resumed_from=checkpoint[0] if checkpoint else None)


def save_adapter(loaded: LoadedModel, tokenizer: Any, config: tc.TrainConfig, base_spec: str, base_dir: Path,
                 style: str, run: Run) -> Path:
    """The final adapter in PEFT format (adapter_config.json + adapter_model.safetensors) with the
    tokenizer, written beside ``<output>/adapter`` and renamed into place."""
    out = config.output_dir
    final, tmp, old = out / ADAPTER_DIR, out / f".{ADAPTER_DIR}.tmp", out / f".{ADAPTER_DIR}.old"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    model = loaded.model
    base_name = base_spec if not Path(base_spec).expanduser().exists() else str(base_dir.resolve())
    for peft_config in getattr(model, "peft_config", {}).values():
        peft_config.base_model_name_or_path = base_name
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tc.save(config, tmp / tc.CONFIG_FILE)
    write_json(tmp / ADAPTER_INFO, {"base": base_name, "style": style, "template": config.template,
                                    "reasoning_effort": config.reasoning_effort, "engine": loaded.engine,
                                    "steps": run.total_steps, "final_loss": run.last_loss})
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def run_training(config: tc.TrainConfig, *, resume: bool = False, sink: "TrainProgress | None" = None,
                 samples: Sequence | None = None, on_step: Callable[[dict[str, Any]], None] | None = None,
                 sequences: Sequence[Encoded] | None = None, engine: Any = None,
                 job_pid: int | None = None) -> RunResult:
    """Train as configured; returns how it ended. Raises :class:`HaruhiError` (after an ``error`` and an
    ``end`` event) for anything a user must fix, and :class:`Cancelled` when stopped by a signal."""
    device = resolve_device(config)
    placement = Placement.from_env(device)
    events = EventLog(config.output_dir, JOB, enabled=placement.is_main)
    with GracefulStop() as stop:
        run = Run(config, placement, events, stop, sink=sink if placement.is_main else None, on_step=on_step)
        try:
            return _run(run, resume, samples, job_pid, sequences, engine)
        except Cancelled:
            raise
        except KeyboardInterrupt:
            run.events.end("cancelled", metrics=_metrics(run), outputs=_outputs(run))
            raise Cancelled("training cancelled before it started; nothing was saved") from None
        except HaruhiError as exc:
            _fail(run, str(exc), "input")
            raise
        except Exception as exc:
            message = _explain(exc, run.config)
            if message is None:
                _fail(run, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}", "crash")
                raise
            _fail(run, message, "resources")
            raise HaruhiError(message) from None
        finally:
            if run.sink:
                run.sink.close()


def _layout_fields(layout: Layout, placement: Placement) -> dict[str, Any]:
    return {"world_size": placement.world_size, "batch_size": layout.batch_size, "grad_accum": layout.grad_accum,
            "gradient_checkpointing": layout.gradient_checkpointing, "layout_reason": layout.reason}


def _allocated_gib(placement: Placement) -> float | None:
    """GPU memory held by this process's tensors right now (the loaded model), in GiB."""
    if placement.device != "cuda":
        return None
    import torch

    return round(torch.cuda.memory_allocated(placement.torch_device) / 2**30, 2)


def _card_name(placement: Placement) -> str:
    if placement.device != "cuda":
        return "CPU"
    import torch

    return str(torch.cuda.get_device_name(placement.local_rank))


def _fail(run: Run, message: str, kind: str) -> None:
    if run.placement.is_main:
        run.events.error(message, kind=kind)
        run.events.end("failed", metrics=_metrics(run), outputs=_outputs(run))
    elif run.placement.distributed:  # other ranks leave their reason too: the launcher reports it
        EventLog(run.config.output_dir, JOB).error(f"rank {run.placement.rank}: {message}", kind=kind)


def _explain(exc: Exception, config: tc.TrainConfig) -> str | None:
    """A one-line message for resource errors (out of memory), None for real bugs."""
    text = str(exc)
    name = type(exc).__name__
    advice = (f"lower --batch-size (now {config.batch_size or 'auto'}; raise --grad-accum to keep the step size), "
              f"turn on --gradient-checkpointing, or lower --max-length (now {config.max_length})")
    if name == "OutOfMemoryError" or "CUDA out of memory" in text:
        return f"out of GPU memory: {advice}, or use --load-in-4bit"
    if isinstance(exc, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in text:
        return f"out of memory: {advice}"
    return None


def _metrics(run: Run) -> dict[str, Any]:
    elapsed = run.elapsed()
    return {"steps": run.steps_done, "total_steps": run.total_steps, "loss": run.last_loss,
            "elapsed": round(elapsed, 1),
            "tokens": run.tokens_total,
            "real_token_share": round(run.tokens_total / run.padded_total, 4) if run.padded_total else None,
            "gpu_memory_gb": gpu_memory_gb()}


def _outputs(run: Run) -> dict[str, str]:
    outputs = {"events": str(run.config.output_dir / EVENTS_FILE)}
    if run.last_checkpoint:
        outputs["checkpoint"] = str(run.last_checkpoint)
    return outputs


def _finish_from_checkpoint(run: Run, checkpoint: Path, tokenizer: Any, base_dir: Path, style: str) -> RunResult:
    """Resuming a run that already reached its last step: its last checkpoint becomes the adapter."""
    config = run.config
    run.log(f"{checkpoint.name} already completes the {run.total_steps} planned steps; writing the adapter from it")
    run.steps_done = int(checkpoint.name[len(CHECKPOINT_PREFIX):])
    outputs = _outputs(run)
    metrics = _metrics(run)
    if run.placement.is_main:
        out = config.output_dir
        final, tmp = out / ADAPTER_DIR, out / f".{ADAPTER_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns(
            "optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json", "training_args.bin",
            CHECKPOINT_MARKER))
        base_name = config.base if not Path(config.base).expanduser().exists() else str(base_dir.resolve())
        tokenizer.save_pretrained(str(tmp))
        adapter_config = read_json(tmp / "adapter_config.json", "adapter config")
        adapter_config["base_model_name_or_path"] = base_name
        write_json(tmp / "adapter_config.json", adapter_config)
        tc.save(config, tmp / tc.CONFIG_FILE)
        write_json(tmp / ADAPTER_INFO, {"base": base_name, "style": style, "template": config.template,
                                        "reasoning_effort": config.reasoning_effort, "engine": None,
                                        "steps": run.total_steps, "final_loss": run.last_loss})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        outputs["adapter"] = str(final)
        run.events.end("completed", metrics=metrics, outputs=outputs)
    return RunResult("completed", run.total_steps, metrics, outputs)


def _run(run: Run, resume: bool, samples: Sequence | None, job_pid: int | None,
         given_sequences: Sequence[Encoded] | None = None, given_engine: Any = None) -> RunResult:
    from haruhi_tui.core.prompt_format import detect_style

    config, placement = run.config, run.placement
    engine_name = resolve_engine(config, placement.device)
    if engine_name == "unsloth":
        import unsloth  # noqa: F401  (Unsloth patches transformers; it must come first)
    import transformers

    transformers.logging.set_verbosity_error()  # our events and progress say what matters
    if not (run.sink and run.sink.live):
        transformers.logging.disable_progress_bar()

    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = latest_checkpoint(out) if resume else None
    if placement.is_main:
        tc.save(config, out / tc.CONFIG_FILE)
    if checkpoint:
        marker = read_json(checkpoint[1] / CHECKPOINT_MARKER, "checkpoint marker")
        run.elapsed_before = float(marker.get("elapsed", 0.0))
        run.tokens_total = int(marker.get("tokens", 0))
        run.padded_total = int(marker.get("padded", 0))
        run.last_checkpoint = checkpoint[1]

    if samples is None and given_sequences is None:
        from haruhi_tui.core.sharegpt import resolve_dataset

        if ":" not in config.dataset and not Path(config.dataset).exists():
            raise HaruhiError(f"dataset not found: {config.dataset}; build it with `haruhi data build -o "
                              f"{Path(config.dataset).parent}/` or pass --dataset FILE (ShareGPT) or DIR:NAME")
        samples = resolve_dataset(config.dataset)
    base_dir = resolve_base(config.base)
    mtype = model_type(base_dir)
    if config.lora_dropout and "mlp" in config.lora_targets and mtype == "gpt_oss":
        raise HaruhiError("--lora-dropout must be 0 when the MoE experts are LoRA targets (PEFT cannot apply dropout "
                          "to 3-D expert weights); set it to 0 or leave 'mlp' out of --lora-targets")
    tokenizer = load_tokenizer(base_dir)
    style = detect_style(mtype, getattr(tokenizer, "chat_template", None))
    if config.template == "model" and style == "harmony" and not tokenizer.chat_template:
        raise HaruhiError("--template model, but the checkpoint has no chat template; use --template haruhi")
    if given_sequences is not None:
        sequences, stats = list(given_sequences), sequence_stats(given_sequences)
    else:
        sequences, stats = prepare_sequences(config, tokenizer, style, samples)
    run.note(f"data: {stats.samples:,} samples -> {stats.sequences:,} sequences ({stats.split_samples} split, "
             f"{stats.truncated} shortened, {stats.dropped} dropped), {stats.tokens:,} tokens of which "
             f"{stats.trainable_tokens:,} carry the loss")
    previous = previous_resolved(out) if checkpoint else {}
    if previous and int(previous.get("world_size") or 1) != placement.world_size:
        count = int(previous.get("world_size") or 1)
        raise HaruhiError(f"{out} was trained by {count} process{'es' if count != 1 else ''} and its data order "
                          f"depends on it; resume it with {'--gpus ' + str(count) if count > 1 else 'one process'}")
    layout = resolve_layout(config, placement, base_dir, engine_name, sequences, previous)
    config = run.config = dataclasses.replace(config, batch_size=layout.batch_size, grad_accum=layout.grad_accum,
                                              gradient_checkpointing="on" if layout.gradient_checkpointing else "off")
    if checkpoint and previous.get("packing"):
        plan = plan_batches(sequences, previous["packing"], config.batch_size, config.max_length, config.seed,
                            placement.world_size)
        run.total_steps = steps_for(plan, config)
        if checkpoint[0] >= run.total_steps:
            _emit_start(run, config, {"engine": engine_name, "packing": previous["packing"], "style": style,
                                      **_layout_fields(layout, placement)}, checkpoint, job_pid)
            return _finish_from_checkpoint(run, checkpoint[1], tokenizer, base_dir, style)

    run.note(f"loading {config.base} with the {engine_name} engine ...")
    loaded = (given_engine or engine_for(engine_name)).load(config, base_dir, placement)
    loaded_gib = _allocated_gib(placement)
    packing = previous.get("packing") or (config.packing if config.packing != "auto" else
                                          ("packed" if loaded.packs_safely else "grouped"))
    if packing == "packed" and not loaded.packs_safely:
        raise HaruhiError(f"packed rows would let samples attend to each other with this model and engine "
                          f"({loaded.info.get('attention')}); use --packing grouped" +
                          (" (the run being resumed was packed: start a new run)" if previous else ""))
    plan = plan_batches(sequences, packing, config.batch_size, config.max_length, config.seed, placement.world_size)
    run.total_steps = steps_for(plan, config)
    run.steps_per_epoch = steps_per_epoch(plan, config)
    run.layout_key = (config.batch_size, config.grad_accum, int(config.checkpointing), len(plan.rounds))
    resolved = {"engine": engine_name, "device": placement.device, "packing": packing, "style": style,
                "base_dir": str(base_dir), "model_type": mtype, **_layout_fields(layout, placement)}
    card = _card_name(placement)
    key = speed_key(config, resolved, len(sequences), card)
    if placement.device == "cuda" and placement.distributed:
        run.speed_reference = throughput.load_reference(key)
    _emit_start(run, config, resolved, checkpoint, job_pid)
    run.log(f"data: {stats.samples:,} samples -> {stats.sequences:,} sequences, {stats.tokens:,} tokens "
            f"({stats.trainable_tokens:,} carry the loss); {plan.mode} into {len(plan.rounds):,} rounds of "
            f"{placement.world_size} x {config.batch_size} rows, {plan.real_token_share:.1%} real tokens, "
            f"{plan.token_spread():.1%} apart between processes; {run.total_steps:,} steps "
            f"({run.steps_per_epoch:,} per epoch)")
    run.log(f"model: {loaded.info.get('model_type')} on {placement.device} x{placement.world_size} with {engine_name} "
            f"({loaded.info.get('dtype')}, {loaded.info.get('attention')}), "
            f"{loaded.info.get('trainable_parameters', 0):,} trainable parameters, loaded in "
            f"{loaded.info.get('load_seconds')} s" + (f", {loaded_gib} GiB" if loaded_gib is not None else ""))
    run.log(f"step layout: {layout.describe()}")
    reference = f"{run.speed_reference:,.0f} tokens/s on one {card}" if run.speed_reference else None
    run.events.emit("log", level="info", message="details", engine=loaded.info, data=stats.as_dict(),
                    plan=plan.summary(), layout={**layout.as_dict(), "loaded_gib": loaded_gib, "card": card},
                    speed_reference=reference)
    if resume and not checkpoint:
        run.log("no complete checkpoint to resume from: starting at step 0", "warning")

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .hf_trainer import HaruhiTrainer, RunCallback, training_arguments

    args = training_arguments(config, placement, run.total_steps, loaded.info.get("dtype", ""), loaded.engine)
    profiler = None
    if config.profile_steps:
        from .profiling import PROFILE_WARMUP, StepProfiler

        profiler = StepProfiler(PROFILE_WARMUP, config.profile_steps, placement.device == "cuda",
                                out / f"profile-rank{placement.rank}.txt",
                                f"rank {placement.rank} of {placement.world_size}, {engine_name}, {layout.describe()}")
    callback = RunCallback(run, profiler)
    trainer = HaruhiTrainer(model=loaded.model, args=args,
                            train_dataset=PlannedBatches(sequences, plan, tokenizer.pad_token_id),
                            data_collator=unwrap_batch, callbacks=[callback],
                            token_counts=run.step_tokens, sparse_logits=loaded.sparse_logits)

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    run.started = time.time()
    output = trainer.train(resume_from_checkpoint=str(checkpoint[1]) if checkpoint else None)
    steps = trainer.state.global_step
    metrics = _metrics(run)
    metrics.update({"steps": steps, "train_loss": finite_number(output.training_loss)})
    metrics["tokens_per_second"] = callback.throughput()
    if placement.device == "cuda" and not placement.distributed and placement.is_main:
        throughput.save_reference(key, callback.speed, out)
    if callback.cancelled:
        if placement.is_main:
            run.events.end("cancelled", metrics=metrics, outputs=_outputs(run))
        where = f"checkpoint saved in {run.last_checkpoint}" if run.last_checkpoint else "no checkpoint was saved"
        raise Cancelled(f"training cancelled ({run.stop.requested}) at step {steps}; {where}; continue with "
                        f"haruhi train --resume --output {config.output}")
    outputs = _outputs(run)
    if placement.is_main:
        adapter = save_adapter(loaded, tokenizer, config, config.base, base_dir, style, run)
        outputs["adapter"] = str(adapter)
        run.events.end("completed", metrics=metrics, outputs=outputs)
    return RunResult("completed", steps, metrics, outputs)
