"""Our pieces of transformers' Trainer: the loss, the per-step bookkeeping and the training arguments.

:mod:`trainer.train_loop` imports this module only once a run starts (it imports torch and transformers),
so ``haruhi --help`` and ``haruhi train --help`` stay instant.

* :class:`HaruhiTrainer` counts each batch's tokens (:class:`~trainer.run_state.TokenCounts`) and, for
  engines without a fused loss, computes logits only where a label is.
* :class:`RunCallback` turns steps into events and progress, shares the token counts and a stop request
  across ranks at the end of each step, and marks each checkpoint complete once it is saved.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from haruhi_tui.core.fsutil import make_public, write_json

from . import train_config as tc
from .engines import Placement
from .run_state import CHECKPOINT_MARKER, CHECKPOINT_PREFIX, Run, TokenCounts, finite_number, gpu_memory_gb


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

    def _select_rows(self, module: Any, args: tuple) -> tuple | None:
        if self._keep is None:
            return None
        return (args[0][self._keep].unsqueeze(0), *args[1:])

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        counts = inputs.pop("haruhi_tokens", None)
        if counts is not None:
            self.token_counts.add(*counts.tolist())
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
    """Per-step bookkeeping on every rank (token counts, the shared stop flag) and, on rank 0, the
    events and the progress view."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.step_tokens = TokenCounts()  # the last step's, summed over ranks
        self.step_time = 0.0
        self.last = time.time()
        self.times: list[float] = []
        self.reals: list[int] = []
        self.cancelled = False

    def throughput(self) -> float | None:
        """Real tokens per second over this session's steps, the first (warm-up) step left out."""
        times, reals = (self.times[1:], self.reals[1:]) if len(self.times) > 1 else (self.times, self.reals)
        return round(sum(reals) / sum(times), 1) if times and sum(times) > 0 else None

    def on_train_begin(self, args, state, control, **kwargs):
        self.run.stop.graceful = True
        self.run.first_step = self.run.steps_done = state.global_step
        self.last = time.time()
        if self.run.placement.is_main and state.max_steps != self.run.total_steps:
            self.run.log(f"the trainer plans {state.max_steps} steps, the run planned {self.run.total_steps}")
            self.run.total_steps = state.max_steps
        self.run.sink_start(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        tokens = self.run.step_tokens.take()
        stop_requested = bool(self.run.stop.requested)
        if self.run.placement.distributed:  # every rank's tokens, and a stop asked for on any rank
            values = [tokens.padded, tokens.real, tokens.trainable, int(stop_requested)]
            tensor = torch.tensor(values, dtype=torch.long, device=self.run.placement.torch_device)
            dist.all_reduce(tensor)
            padded, real, trainable, stops = tensor.tolist()
            tokens, stop_requested = TokenCounts(padded, real, trainable), stops > 0
        now = time.time()
        self.run.steps_done = state.global_step
        self.step_time, self.last = now - self.last, now
        self.times.append(self.step_time)
        self.reals.append(tokens.real)
        self.step_tokens = tokens
        self.run.tokens_total += tokens.real
        self.run.padded_total += tokens.padded
        if stop_requested and not self.cancelled:
            self.cancelled = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not self.run.placement.is_main:
            return
        real, padded = self.step_tokens.real, self.step_tokens.padded
        recent = self.times[1:][-50:] or self.times[-1:]
        per_step = sum(recent) / len(recent) if recent else 0.0
        remaining = max(0, state.max_steps - state.global_step)
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
            "eta": round(per_step * remaining, 1),
            "gpu_memory_gb": gpu_memory_gb(),
        }
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
            make_public(path)  # safetensors writes the adapter 0600 through a temp file of its own
            write_json(path / CHECKPOINT_MARKER, {"step": state.global_step, "elapsed": round(self.run.elapsed(), 1),
                                                  "tokens": self.run.tokens_total, "padded": self.run.padded_total,
                                                  "time": round(time.time(), 3)})
            self.run.last_checkpoint = path
            self.run.events.emit("checkpoint", step=state.global_step, path=str(path))


def training_arguments(config: tc.TrainConfig, placement: Placement, total_steps: int, dtype_name: str,
                       engine: str) -> TrainingArguments:
    """The Trainer's settings for our recipe: each dataset item is one planned batch; it logs every step,
    saves every ``save_steps``; we do the progress display and the events."""
    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = "adamw_torch_fused" if placement.device == "cuda" else "adamw_torch"
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
        dataloader_num_workers=0,
        dataloader_pin_memory=placement.device == "cuda",
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        save_only_model=False,
        logging_nan_inf_filter=False,
    )
