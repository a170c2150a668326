"""Where a training step's time goes: torch.profiler over a few steps after the warm-up, on every process.

``haruhi train --profile-steps N`` profiles steps ``PROFILE_WARMUP + 1 .. PROFILE_WARMUP + N`` of a session on
every rank and writes ``<output>/profile-rank<R>.txt``: the wall time per step, the GPU's kernel time per step
by kind (expert GEMMs, attention, the gradient all-reduce and other NCCL collectives, host-device copies, ...),
and the host calls that wait (stream synchronisations, blocking copies, reading a value back). Rank 0 of an
N-GPU run next to a one-GPU run shows what data parallelism adds to a step. ``benchmarks/bench_train.py``
profiles with the same class.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

#: Steps of a session before profiling starts (compilation and warm-up happen there).
PROFILE_WARMUP = 5

#: Kernel-name patterns, first match wins (names as CUDA, NCCL and Triton report them).
KERNEL_GROUPS = [
    ("gradient all-reduce and other NCCL collectives", ("nccl",)),
    ("expert grouped GEMM", ("grouped", "group_gemm", "groupproblemshape", "moe")),
    ("host-device copies (offloaded activations, batches)", ("memcpy dtoh", "memcpy htod")),
    ("attention", ("flex", "attn", "attention", "triton_tem", "fmha", "sdpa")),
    ("dense GEMM (projections, LoRA, LM head)", ("gemm", "cutlass", "xmma", "nvjet", "sm90", "cublas", "aten::mm",
                                                 "addmm", "bmm")),
    ("cross-entropy / softmax", ("cross_entropy", "softmax", "logsumexp")),
    ("fused elementwise (Triton)", ("triton_",)),
    ("copies and casts", ("copy", "cast", "cat", "fill", "memcpy", "memset")),
]
#: Host calls that wait for the GPU or for the other processes.
HOST_WAITS = ("cudastreamsynchronize", "cudadevicesynchronize", "cudaeventsynchronize", "cudamemcpy",
              "aten::item", "aten::_local_scalar_dense", "c10d::", "nccl:", "record_param_comms")


def _device_seconds(event: Any) -> float:
    us = getattr(event, "self_device_time_total", None)
    if us is None:
        us = getattr(event, "self_cuda_time_total", 0)
    return (us or 0) / 1e6


def _is_device_event(event: Any) -> bool:
    from torch.autograd import DeviceType

    return getattr(event, "device_type", None) == DeviceType.CUDA


class StepProfiler:
    """torch.profiler over ``active`` steps after ``warmup`` steps; :meth:`step` after every step, :meth:`finish`
    at the end writes the summary to ``path`` (when given) and returns it."""

    def __init__(self, warmup: int, active: int, cuda: bool, path: Path | None = None, title: str = "") -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        self.cuda = cuda
        self.active = active
        self.path = path
        self.title = title
        self.started_at = 0.0
        self.wall = 0.0
        self.steps_seen = 0
        self.finished = False
        self.summary: dict[str, Any] | None = None
        wait = max(warmup - 1, 0)
        self.first = wait + 2  # the first profiled step (steps count from 1; one profiler warm-up step before it)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self.prof = profile(activities=activities, schedule=schedule(wait=wait, warmup=1, active=active, repeat=1))
        self.prof.start()

    @property
    def profiling(self) -> bool:
        """Whether the step in flight is one of the profiled ones."""
        return self.first <= self.steps_seen + 1 < self.first + self.active

    def step(self) -> None:
        """After every step; the summary is written right after the last profiled step (a run killed later
        still leaves it)."""
        if self.finished:
            return
        self.steps_seen += 1
        if self.steps_seen in (self.first - 1, self.first - 1 + self.active):  # the profiled steps' bounds
            if self.cuda:
                import torch

                torch.cuda.synchronize()
            if self.steps_seen == self.first - 1:
                self.started_at = time.perf_counter()
            else:
                self.wall = time.perf_counter() - self.started_at
        self.prof.step()
        if self.steps_seen == self.first - 1 + self.active:
            self.finish()

    def finish(self) -> dict | None:
        """Stop, write the summary (once) and return it."""
        if self.finished:
            return self.summary
        self.finished = True
        done = min(self.active, max(0, self.steps_seen - self.first + 1))
        if done and not self.wall:  # the session ended inside the profiled steps
            if self.cuda:
                import torch

                torch.cuda.synchronize()
            self.wall = time.perf_counter() - self.started_at
        self.prof.stop()
        if not done:  # nothing to write (and an earlier session's profile stays)
            self.summary = {"steps": 0, "note": f"the session ended before step {self.first}"}
            return self.summary
        kernels, host = [], []
        for event in self.prof.key_averages():
            if self.cuda and _is_device_event(event):
                if _device_seconds(event) > 0:
                    kernels.append((event.key, _device_seconds(event), event.count))
            elif event.self_cpu_time_total > 0:
                host.append((event.key, event.self_cpu_time_total / 1e6, event.count))
        if not self.cuda:  # CPU runs: the ops' own CPU time is the device time
            kernels = list(host)
        kernels.sort(key=lambda r: -r[1])
        host.sort(key=lambda r: -r[1])
        total = sum(r[1] for r in kernels) or 1e-9
        groups: dict[str, float] = {}
        for name, seconds, _ in kernels:
            low = name.lower()
            group = next((g for g, keys in KERNEL_GROUPS if any(k in low for k in keys)), "other")
            groups[group] = groups.get(group, 0.0) + seconds
        waits = sum(seconds for name, seconds, _ in host if any(w in name.lower() for w in HOST_WAITS))
        summary = {"steps": done,
                   "wall_seconds_per_step": round(self.wall / done, 4) if self.wall else None,
                   "gpu_kernel_seconds_per_step": round(total / done, 4),
                   "host_wait_seconds_per_step": round(waits / done, 4),
                   "gpu_seconds_per_step_by_group": {g: round(t / done, 4)
                                                     for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
                   "gpu_share_by_group": {g: round(t / total, 3) for g, t in groups.items()}}
        self._write(summary, kernels, host)
        self.summary = summary
        return summary

    def _write(self, summary: dict, kernels: list, host: list) -> None:
        if self.path is None:
            return
        steps = max(1, summary.get("steps") or 1)
        total = sum(r[1] for r in kernels) or 1e-9
        lines = [f"# profile: {self.title}, {summary.get('steps')} steps after {self.first - 1}", "",
                 json.dumps(summary, indent=2), "", "## GPU kernels" if self.cuda else "## ops",
                 f"{'s/step':>10}  {'share':>6}  {'calls/step':>10}  kernel"]
        for name, seconds, count in kernels[:40]:
            lines.append(f"{seconds / steps:10.4f}  {seconds / total:6.1%}  {count / steps:10.1f}  {name[:150]}")
        if self.cuda:
            lines += ["", "## host (CPU self time)", f"{'s/step':>10}  {'calls/step':>10}  call"]
            for name, seconds, count in host[:30]:
                lines.append(f"{seconds / steps:10.4f}  {count / steps:10.1f}  {name[:150]}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(lines) + "\n", encoding="utf-8")
