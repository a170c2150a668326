"""Figures of `haruhi train` runs from their events.jsonl, for benchmarks/gpu/multi_gpu.sh (also on a CPU run).

  python3 benchmarks/gpu/multi_gpu_stats.py --out FILE.json [--eval DIR ...] RUN_DIR ...
  python3 benchmarks/gpu/multi_gpu_stats.py --wait RUN_DIR --checkpoint 16 --step 17 --timeout 400
  python3 benchmarks/gpu/multi_gpu_stats.py --machine FILE.json

Per run, from its first session (a resumed session's steps are warm-up again): how it ended, the step layout
(rows x micro-batches, gradient checkpointing, why) and the process count, then over the steps after the warm-up
(profiled steps, and the step after a checkpoint save, which carries the save's time, left out): median and mean
tokens/s in all and per GPU, the peak memory of every rank, the time one epoch would take, the profile summary
of every rank (profile-rank*.txt) and the layout's memory estimate next to the measured peak.
Scaling: tokens/s per GPU over a one-GPU run with the same layout (like for like).
--wait polls a running run until checkpoint N is complete and step M logged (exit 0), or it ends first (exit 1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

WARMUP = 4  # compilation and warm-up happen in the first steps of a session


def events(run: Path) -> list[dict[str, Any]]:
    from haruhi_tui.core.events import read_events

    return read_events(run)[0] if (run / "events.jsonl").is_file() else []


def sessions(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The records of each session (each starts with a start event)."""
    out: list[list[dict[str, Any]]] = []
    for record in records:
        if record["event"] == "start" or not out:
            out.append([])
        out[-1].append(record)
    return out


def profile_summary(path: Path) -> dict[str, Any] | None:
    """The JSON block at the top of a profile-rank*.txt."""
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index("{")
        end = lines.index("}", start)
    except ValueError:
        return None
    return json.loads("\n".join(lines[start:end + 1]))


def run_figures(run: Path, warmup: int = WARMUP) -> dict[str, Any]:
    records = events(run)
    if not records:
        return {"run": str(run), "status": "no events"}
    first = sessions(records)[0]
    start = next((r for r in first if r["event"] == "start"), {})
    resolved = (start.get("config") or {}).get("resolved") or {}
    details = next((r for r in first if r.get("message") == "details"), {})
    steps = [r for r in first if r["event"] == "step"]
    saved = {r["step"] for r in first if r["event"] == "checkpoint"}
    skip = {s + 1 for s in saved}
    first_step = steps[0]["step"] if steps else 0
    measured = [r for r in steps if r["step"] >= first_step + warmup and not r.get("profiled")
                and r["step"] not in skip and r.get("tokens_per_second")]
    rates = [r["tokens_per_second"] for r in measured]
    world = int(resolved.get("world_size") or 1)
    seconds = [_step_seconds(r) for r in measured]
    tokens = [sum(r.get("rank_tokens") or []) for r in measured]
    mean = sum(tokens) / sum(seconds) if measured and sum(seconds) > 0 else None
    memory: list[float | None] = []
    for r in steps:
        for i, m in enumerate(r.get("rank_memory_gb") or []):
            if i >= len(memory):
                memory.append(None)
            if m is not None:
                memory[i] = max(memory[i] or 0.0, m)
    plan = details.get("plan") or {}
    per_epoch = -(-int(plan.get("rounds") or 0) // int(resolved.get("grad_accum") or 1)) if plan else None
    step_time = statistics.median(seconds) if seconds else None
    ends = [r for r in records if r["event"] == "end"]
    out = {
        "run": run.name, "status": ends[-1]["status"] if ends else "running or killed",
        "sessions": len(sessions(records)), "world_size": world,
        "layout": {k: resolved.get(k) for k in ("batch_size", "grad_accum", "gradient_checkpointing")},
        "layout_reason": resolved.get("layout_reason"), "engine": resolved.get("engine"),
        "packing": resolved.get("packing"),
        "estimate_gib": (details.get("layout") or {}).get("estimate_gib"),
        "loaded_gib": (details.get("layout") or {}).get("loaded_gib"),
        "card": (details.get("layout") or {}).get("card"),
        "steps_logged": len(steps), "steps_measured": len(measured),
        "measured_steps": [r["step"] for r in measured],
        "tokens_per_second_median": round(statistics.median(rates), 1) if rates else None,
        "tokens_per_second_mean": round(mean, 1) if mean else None,
        "tokens_per_second_per_gpu_median": round(statistics.median(rates) / world, 1) if rates else None,
        "peak_memory_gib_per_rank": memory,
        "rank_token_spread": plan.get("rank_token_spread"),
        "real_token_share": plan.get("real_token_share"),
        "steps_per_epoch": per_epoch,
        "epoch_minutes": round(step_time * per_epoch / 60, 2) if step_time and per_epoch else None,
        "dataset_tokens": (details.get("data") or {}).get("tokens"),
        "final_loss": (ends[-1].get("metrics") or {}).get("loss") if ends else None,
        "scaling_in_events": steps[-1].get("scaling") if steps else None,
        "errors": [r.get("message") for r in records if r["event"] == "error"][-3:],
        "profiles": {p.stem: profile_summary(p) for p in sorted(run.glob("profile-rank*.txt"))},
    }
    if out["dataset_tokens"] and mean:
        out["epoch_minutes_from_mean_rate"] = round(out["dataset_tokens"] / mean / 60, 2)
    return out


def _step_seconds(record: dict[str, Any]) -> float:
    return sum(record.get("rank_tokens") or []) / record["tokens_per_second"]


def add_scaling(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tokens/s per GPU of each multi-GPU run over the one-GPU run with the same layout."""
    rows = []
    for run in runs:
        if run.get("world_size", 1) < 2 or not run.get("tokens_per_second_per_gpu_median"):
            continue
        same = [r for r in runs if r.get("world_size") == 1 and r.get("layout") == run.get("layout")
                and r.get("tokens_per_second_median")]
        if not same:
            rows.append({"run": run["run"], "world_size": run["world_size"], "reference": None,
                         "note": "no one-GPU run with the same layout"})
            continue
        ref = same[0]
        per_gpu = run["tokens_per_second_per_gpu_median"]
        rows.append({"run": run["run"], "world_size": run["world_size"], "reference": ref["run"],
                     "scaling_median": round(per_gpu / ref["tokens_per_second_median"], 3),
                     "scaling_mean": round(run["tokens_per_second_mean"] / run["world_size"] /
                                           ref["tokens_per_second_mean"], 3)
                     if run.get("tokens_per_second_mean") and ref.get("tokens_per_second_mean") else None})
        run["scaling"] = rows[-1]
    return rows


def eval_figures(path: Path) -> dict[str, Any]:
    metrics = path / "metrics.json"
    if not metrics.is_file():
        return {"eval": str(path), "status": "no metrics.json"}
    data = json.loads(metrics.read_text(encoding="utf-8"))
    keys = ("predict_bleu-4", "predict_rouge-1", "predict_rouge-l", "predict_runtime", "predict_samples_per_second",
            "complete", "samples", "engine")
    return {"eval": path.name, **{k: data.get(k) for k in keys if k in data}}


def machine() -> dict[str, Any]:
    from importlib import metadata

    info: dict[str, Any] = {"date": dt.datetime.now().isoformat(timespec="seconds")}
    for name in ("torch", "transformers", "peft", "accelerate", "unsloth", "unsloth_zoo", "trl"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    for key, cmd in (("gpus", ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]),
                     ("topology", ["nvidia-smi", "topo", "-m"])):
        try:
            info[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError):
            info[key] = None
    try:
        import os

        info["cpus"] = os.cpu_count()
    except Exception:
        pass
    return info


def wait(run: Path, checkpoint: int, step: int, timeout: float) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = events(run)
        saved = any(r["event"] == "checkpoint" and r["step"] >= checkpoint for r in records)
        stepped = any(r["event"] == "step" and r["step"] >= step for r in records)
        marker = any(path.name.split("-")[-1].isdigit() and int(path.name.split("-")[-1]) >= checkpoint
                     and (path / "haruhi_checkpoint.json").is_file() for path in run.glob("checkpoint-*"))
        if saved and stepped and marker:
            return 0
        if any(r["event"] == "end" for r in records):
            return 1
        time.sleep(1.0)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--eval", type=Path, action="append", default=[])
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--machine", type=Path, help="write the machine's GPUs, topology and versions to this file")
    parser.add_argument("--machine-info", type=Path, help="a --machine file to include in --out")
    parser.add_argument("--notes", type=Path, help="a text file of notes (one per line) to include in --out")
    parser.add_argument("--wait", type=Path)
    parser.add_argument("--checkpoint", type=int, default=0)
    parser.add_argument("--step", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    if args.wait:
        return wait(args.wait, args.checkpoint, args.step, args.timeout)
    if args.machine:
        args.machine.write_text(json.dumps(machine(), indent=2), encoding="utf-8")
        return 0
    runs = [run_figures(run, args.warmup) for run in args.runs if run.is_dir()]
    record = {"date": dt.datetime.now().isoformat(timespec="seconds"), "warmup_steps": args.warmup,
              "machine": json.loads(args.machine_info.read_text()) if args.machine_info and args.machine_info.is_file()
              else None,
              "runs": runs, "scaling": add_scaling(runs), "eval": [eval_figures(p) for p in args.eval],
              "notes": args.notes.read_text(encoding="utf-8").splitlines() if args.notes and args.notes.is_file()
              else []}
    text = json.dumps(record, indent=2, ensure_ascii=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    for run in runs:
        scaling = (run.get("scaling") or {}).get("scaling_median")
        print(f"{run['run']:>16}: {run['status']:>10}, x{run.get('world_size')}, layout {run.get('layout')}, "
              f"{run.get('tokens_per_second_median')} tok/s median ({run.get('tokens_per_second_per_gpu_median')}"
              f"/GPU{f', {scaling:.0%} of 1 GPU' if scaling else ''}), peak {run.get('peak_memory_gib_per_rank')} GiB, "
              f"epoch {run.get('epoch_minutes')} min, {run.get('steps_measured')} steps measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
