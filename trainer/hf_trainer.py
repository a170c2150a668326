"""Our pieces of transformers' Trainer: the loss, the per-step bookkeeping and the training arguments.

:mod:`trainer.train_loop` imports this module only once a run starts (it imports torch and transformers),
so ``haruhi --help`` and ``haruhi train --help`` stay instant.

* :class:`HaruhiTrainer` counts each batch's tokens (:class:`~trainer.run_state.TokenCounts`) and, for
  engines without a fused loss, computes logits only where a label is.
* :class:`RunCallback` turns steps into events and progress, shares every rank's token counts, peak memory
  and a stop request in one collective at the end of each step, and marks each checkpoint complete once
  it is saved.

What runs per micro-batch on the host is kept to what the step needs: the token counts are plain ints (a
tensor would have been copied to the GPU with the batch, and reading it back would wait for the GPU at every
micro-batch), the Trainer's FLOP count (a walk over every parameter per micro-batch, and an all-gather per
step) is skipped, batches are copied to the GPU without blocking. Under DDP the Trainer already runs every
micro-batch but the last of a step under ``no_sync`` (one gradient all-reduce per optimizer step; a test
counts them); gradients are views into DDP's buckets (no copy, no second buffer), buffers are not
re-broadcast before every forward (no layer changes them), and the sampler is sequential:
:class:`~trainer.batch_plan.PlannedBatches` orders the batches.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import write_json

from . import train_config as tc
from .engines import Placement
from .run_state import CHECKPOINT_MARKER, CHECKPOINT_PREFIX, Run, TokenCounts, finite_number
from .throughput import Throughput


class HaruhiTrainer(Trainer):
    """Counts tokens per step into ``token_counts``, and, for engines without a fused loss, computes logits
    only where a label is (the lm head and the softmax over a 200k vocabulary are skipped for the prompt)."""

    def __init__(self, *args: Any, token_counts: TokenCounts, sparse_logits: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.token_counts = token_counts
        self.sparse_logits = sparse_logits
        self._keep: Any = None
        if sparse_logits:
            self.model.get_output_embeddings().register_forward_pre_hook(self._select_rows)
        handler = getattr(self.accelerator, "ddp_handler", None)
        if handler is not None:  # the DDP wrapper accelerate builds in train(): gradients live in its buckets
            handler.gradient_as_bucket_view = True
        if self.args.device.type == "cpu" and self.args.device.index is not None:
            _load_cpu_indexed_locations()

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """Not counted: the Trainer's estimate walks every parameter of the model at every micro-batch."""
        return 0

    def store_flos(self) -> None:
        """Nothing to store (see :meth:`floating_point_ops`), so no all-gather of a FLOP count at every step."""
        self.current_flos = 0

    def _select_rows(self, module: Any, args: tuple) -> tuple | None:
        if self._keep is None:
            return None
        return (args[0][self._keep].unsqueeze(0), *args[1:])

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        counts = inputs.pop("haruhi_tokens", None)
        if counts is not None:
            self.token_counts.add(*counts)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if not self.sparse_logits or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        keep = targets != -100
        self._keep = keep
        try:
            outputs = model(**inputs)
        finally:
            self._keep = None
        logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        if num_items_in_batch is not None:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                loss = loss * self.accelerator.num_processes
        else:
            loss = loss / keep.sum().clamp(min=1)
        return (loss, outputs) if return_outputs else loss


class RunCallback(TrainerCallback):
    """Per-step bookkeeping on every rank (token counts, peak memory, the shared stop flag, the profiler)
    and, on rank 0, the events and the progress view."""

    def __init__(self, run: Run, profiler: Any = None) -> None:
        self.run = run
        self.step_tokens = TokenCounts()  # the last step's, summed over ranks
        self.rank_tokens: list[int] = []  # the last step's real tokens per rank
        self.rank_memory: list[float | None] = []  # peak GiB per rank so far
        self.step_time = 0.0
        self.last = time.time()
        self.speed = Throughput(run.placement.world_size, run.steps_per_epoch, run.speed_reference)
        self.profiler = profiler
        self.profiled = False  # the last step ran under the profiler
        self.cancelled = False

    def throughput(self) -> float | None:
        """Real tokens per second over this session's steps, the warm-up and profiled steps left out."""
        return self.speed.overall()

    def on_train_begin(self, args, state, control, **kwargs):
        placement = self.run.placement
        if placement.distributed and self.run.layout_key:  # a different layout on one process would hang the run
            mine = torch.tensor(self.run.layout_key, dtype=torch.long, device=placement.torch_device)
            everyone = [torch.empty_like(mine) for _ in range(placement.world_size)]
            dist.all_gather(everyone, mine)
            if any(not torch.equal(other, mine) for other in everyone):
                raise HaruhiError("the training processes chose different step layouts (rows, micro-batches, "
                                  f"checkpointing, rounds: {[t.tolist() for t in everyone]}); pass --batch-size, "
                                  "--grad-accum and --gradient-checkpointing explicitly")
        self.run.stop.graceful = True
        self.run.first_step = self.run.steps_done = state.global_step
        self.last = time.time()
        if self.run.placement.is_main and state.max_steps != self.run.total_steps:
            self.run.log(f"the trainer plans {state.max_steps} steps, the run planned {self.run.total_steps}")
            self.run.total_steps = state.max_steps
        self.run.sink_start(state.global_step)

    def _share(self, tokens: TokenCounts, stop_requested: bool) -> list[list[int]]:
        """Every rank's (padded, real, trainable, stop, peak MiB), in one all-gather of a few ints."""
        placement = self.run.placement
        local = [tokens.padded, tokens.real, tokens.trainable, int(stop_requested), _peak_mib(placement)]
        if not placement.distributed:
            return [local]
        tensor = torch.tensor(local, dtype=torch.long, device=placement.torch_device)
        gathered = [torch.empty_like(tensor) for _ in range(placement.world_size)]
        dist.all_gather(gathered, tensor)
        return torch.stack(gathered).tolist()

    def on_step_end(self, args, state, control, **kwargs):
        ranks = self._share(self.run.step_tokens.take(), bool(self.run.stop.requested))
        tokens = TokenCounts(*(sum(r[i] for r in ranks) for i in range(3)))
        stop_requested = any(r[3] for r in ranks)
        self.rank_tokens = [r[1] for r in ranks]
        self.rank_memory = [round(r[4] / 1024, 2) if r[4] >= 0 else None for r in ranks]
        now = time.time()
        self.run.steps_done = state.global_step
        self.step_time, self.last = now - self.last, now
        self.profiled = bool(self.profiler and self.profiler.profiling)
        self.speed.add(self.step_time, tokens.real, profiled=self.profiled)
        self.step_tokens = tokens
        self.run.tokens_total += tokens.real
        self.run.padded_total += tokens.padded
        if self.profiler:
            self.profiler.step()
            self.last = time.time()  # summarising a profile is not the next step's time
        if stop_requested and not self.cancelled:
            self.cancelled = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.profiler:
            self.profiler.finish()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not self.run.placement.is_main:
            return
        real, padded = self.step_tokens.real, self.step_tokens.padded
        remaining = max(0, state.max_steps - state.global_step)
        memory = [m for m in self.rank_memory if m is not None]
        record = {
            "step": state.global_step,
            "total": state.max_steps,
            "epoch": round(float(state.epoch or 0.0), 4),
            "loss": finite_number(logs.get("loss")),
            "learning_rate": finite_number(logs.get("learning_rate")),
            "grad_norm": finite_number(logs.get("grad_norm")),
            "tokens_per_second": round(real / self.step_time, 1) if self.step_time > 0 else None,
            "real_token_share": round(real / padded, 4) if padded else None,
            "elapsed": round(self.run.elapsed(), 1),
            "eta": round(self.speed.step_seconds() * remaining, 1),
            "gpu_memory_gb": max(memory) if memory else None,
            **self.speed.fields(),
            "rank_tokens": self.rank_tokens,
            "rank_memory_gb": self.rank_memory,
        }
        if self.profiled:
            record["profiled"] = True
        self.run.last_loss = record["loss"]
        self.run.events.emit("step", **record)
        if self.run.sink:
            self.run.sink.step(record)
        if self.run.on_step:
            self.run.on_step(record)

    def on_save(self, args, state, control, **kwargs):
        if not self.run.placement.is_main:
            return
        path = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
        if path.is_dir():
            write_json(path / CHECKPOINT_MARKER, {"step": state.global_step, "elapsed": round(self.run.elapsed(), 1),
                                                  "tokens": self.run.tokens_total, "padded": self.run.padded_total,
                                                  "time": round(time.time(), 3)})
            self.run.last_checkpoint = path
            self.run.events.emit("checkpoint", step=state.global_step, path=str(path))


_CPU_INDEXED_REGISTERED = False


def _load_cpu_indexed_locations() -> None:
    """Let torch.load map onto "cpu:N". accelerate names a multi-process CPU run's device "cpu:0" and the Trainer
    loads a resumed optimizer state onto it, but torch.load only knows "cpu" ("don't know how to restore data
    location ... cpu:0"); this registers the missing location (torch's public serialization hook)."""
    global _CPU_INDEXED_REGISTERED
    if _CPU_INDEXED_REGISTERED:
        return
    _CPU_INDEXED_REGISTERED = True
    torch.serialization.register_package(
        11, lambda obj: None, lambda obj, location: obj.cpu() if location.startswith("cpu:") else None)


def _peak_mib(placement: Placement) -> int:
    """This process's peak CUDA memory in MiB (-1 without CUDA); a host-side query, no GPU sync."""
    if placement.device != "cuda" or not torch.cuda.is_initialized():
        return -1
    return int(torch.cuda.max_memory_allocated(placement.torch_device) // 2**20)


def training_arguments(config: tc.TrainConfig, placement: Placement, total_steps: int, dtype_name: str,
                       engine: str) -> TrainingArguments:
    """The Trainer's settings for our recipe: each dataset item is one planned batch; it logs every step,
    saves every ``save_steps``; we do the progress display and the events."""
    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = "adamw_torch_fused" if placement.device == "cuda" else "adamw_torch"
    pinned = placement.device == "cuda"
    return TrainingArguments(
        output_dir=str(config.output_dir),
        per_device_train_batch_size=1,  # every dataset item is a planned batch
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps(total_steps),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=optimizer,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.keep_checkpoints or None,
        seed=config.seed,
        data_seed=config.seed,
        bf16=placement.device == "cuda" and dtype_name == "bfloat16",
        fp16=placement.device == "cuda" and dtype_name == "float16",
        use_cpu=placement.device == "cpu",
        ddp_backend=("nccl" if placement.device == "cuda" else "gloo") if placement.distributed else None,
        # hf: LoRA on the whole expert tensors, so every adapter weight gets a gradient each step;
        # unsloth: its own DDP defaults decide (its expert kernels may skip unrouted experts).
        ddp_find_unused_parameters=False if engine == "hf" else None,
        ddp_broadcast_buffers=False,  # no buffer changes in training (no batch norm): no broadcast per forward
        train_sampling_strategy="sequential",  # PlannedBatches orders the batches, per epoch and per rank
        accelerator_config={"non_blocking": pinned},  # pinned batches go to the GPU without a host sync
        dataloader_num_workers=0,
        dataloader_pin_memory=pinned,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        save_only_model=False,
        logging_nan_inf_filter=False,
    )
