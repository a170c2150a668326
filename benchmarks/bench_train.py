"""Training speed and memory of `haruhi train` on the gpt-oss-20b architecture, through our own trainer.

Every figure comes from trainer.train_loop.run_training with the real engine classes (trainer.engines):
the same data pipeline, loss, callbacks and checkpointing a user gets. The model has the real gpt-oss-20b
shape (24 layers, hidden 2880, 64 query / 8 KV heads, 32 experts top-4, vocab 201088) with random bf16
weights, which measure speed and memory honestly (not quality).

Workloads (--workloads, comma-separated):
  synthetic  batch 8 x 1024 tokens, every token labelled (the shape of the bare Unsloth loop measured before:
             11,680 tokens/s at 44.9 GiB on one H100 with 24 layers)
  real       haruhi_train with the default recipe (2048-token rows, 4 rows per micro-batch; packed for hf,
             length-grouped for unsloth whose gpt-oss attention ignores sample boundaries); the loss only on
             the character's replies

Engines (--engine): unsloth, hf, or both (each in its own process: importing Unsloth patches transformers).
The hf engine gets the random model built directly on the GPU; Unsloth loads checkpoints only, so for it a
random checkpoint is written once to --scratch (about 39 GB and a minute for 24 layers; reused next time).

Data for `real`: --dataset haruhi_train.json, or --characters DIR to build it here with `haruhi data build`.
Tokenizer: --tokenizer (a folder, a tokenizer.json or tokenizer.json.gz of o200k_harmony), else rebuilt
from quicktok like the tests do.

GPU machine (from the project root, after the wheelhouse install line of ../shared/gpu/make-wheelhouse):
  python benchmarks/bench_train.py --engine both --layers 24 --characters .gpu/characters \\
      --tokenizer .gpu/tokenizer.json.gz --out benchmarks/results/train-h100
CPU smoke run (tiny model, seconds):
  python benchmarks/bench_train.py --device cpu --tiny --steps 2 --out /tmp/bench-train

Writes OUT.json and OUT.md (date, machine, command, versions, one row per engine x workload) and prints an
estimate of one haruhi_train epoch on 1 and 8 GPUs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAD_ID, BOS_ID, RETURN_ID = 199999, 199998, 200002
#: Data-parallel efficiency assumed for the 8-GPU estimate (LoRA gradients are small; NVLink all-reduce).
DDP_EFFICIENCY = 0.9


# -- model and tokenizer ----------------------------------------------------------------------------

def model_config(layers: int, tiny: bool):
    from transformers import GptOssConfig

    if tiny:
        return GptOssConfig(hidden_size=64, intermediate_size=64, head_dim=32, num_attention_heads=4,
                            num_key_value_heads=2, num_hidden_layers=layers, num_local_experts=4,
                            num_experts_per_tok=2, attention_bias=True, tie_word_embeddings=False,
                            pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=RETURN_ID)
    return GptOssConfig(num_hidden_layers=layers, num_local_experts=32, num_experts_per_tok=4,
                        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=RETURN_ID)


def release_gpu_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:
        pass


def build_random_model(config, device: str, attention: str):
    import torch
    from transformers import GptOssForCausalLM

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = GptOssForCausalLM._from_config(config, attn_implementation=attention, dtype=dtype)
    return model


def install_tokenizer(target: Path, source: str | None) -> None:
    """o200k_harmony with our harmony chat template, into ``target`` (tokenizer.json + tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast

    from haruhi_tui.core import harmony

    target.mkdir(parents=True, exist_ok=True)
    if source and Path(source).is_dir():
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
            if (Path(source) / name).is_file():
                shutil.copy(Path(source) / name, target / name)
        return
    tokenizer_json = target / "tokenizer.json"
    if source and source.endswith(".gz"):
        with gzip.open(source, "rb") as fh:
            tokenizer_json.write_bytes(fh.read())
    elif source:
        shutil.copy(source, tokenizer_json)
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import harmony_tokenizer_json  # rebuilt from quicktok's o200k ranks

        shutil.copy(harmony_tokenizer_json(), tokenizer_json)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), bos_token=harmony.STARTOFTEXT,
                                        eos_token=harmony.RETURN, pad_token=harmony.ENDOFTEXT,
                                        chat_template=harmony.CHAT_TEMPLATE, clean_up_tokenization_spaces=False)
    tokenizer.save_pretrained(target)


def prepare_base(scratch: Path, layers: int, tiny: bool, tokenizer: str | None, with_weights: bool,
                 device: str) -> Path:
    """A checkpoint folder: config + tokenizer, and random weights only when an engine must load them."""
    name = f"gpt-oss-{'tiny' if tiny else '20b'}-{layers}l-random"
    base = scratch / name
    if not (base / "tokenizer.json").is_file():
        install_tokenizer(base, tokenizer)
    config = model_config(layers, tiny)
    config.save_pretrained(base)
    has_weights = any(base.glob("*.safetensors"))
    if with_weights and not has_weights:
        started = time.time()
        print(f"writing a random {layers}-layer checkpoint to {base} (Unsloth loads checkpoints only) ...", flush=True)
        model = build_random_model(config, device, "eager")
        model.save_pretrained(base, max_shard_size="5GB")
        del model
        release_gpu_memory()  # else this parent keeps ~39 GB cached while the engine's process trains
        print(f"  written in {time.time() - started:.0f} s", flush=True)
    return base


# -- data -------------------------------------------------------------------------------------------

def prepare_dataset(scratch: Path, dataset: str | None, characters: str | None) -> Path | None:
    if dataset:
        return Path(dataset)
    if not characters:
        return None
    out = scratch / "data"
    if (out / "haruhi_train.json").is_file():
        return out / "haruhi_train.json"
    started = time.time()
    cmd = [sys.executable, "-m", "haruhi_tui.cli", "data", "build", "--characters", characters, "--out", str(out)]
    try:
        import rich  # noqa: F401
        import typer  # noqa: F401

        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": _pythonpath()})
    except ImportError:  # the CLI's own dependencies are missing: the same build through its functions
        from haruhi_tui.core.dataset import BuildOptions, build, write

        write(build(characters, BuildOptions()), out)
    print(f"built haruhi_train in {time.time() - started:.0f} s", flush=True)
    return out / "haruhi_train.json"


def synthetic_sequences(count: int, length: int, vocab: int, seed: int = 0):
    import torch

    from trainer.train_data import Encoded

    generator = torch.Generator().manual_seed(seed)
    sequences = []
    for _ in range(count):
        ids = torch.randint(0, min(vocab, 199998), (length,), generator=generator).tolist()
        sequences.append(Encoded(ids, list(ids)))
    return sequences


# -- one engine, in its own process -----------------------------------------------------------------

def run_workload(engine: str, workload: str, args, base: Path, dataset: Path | None, scratch: Path) -> dict:
    import torch

    from trainer import train_config as tc
    from trainer.engines import HFEngine
    from trainer.train_loop import run_training

    device = args.device
    steps = args.warmup + args.steps
    out = scratch / f"run-{engine}-{workload}"
    shutil.rmtree(out, ignore_errors=True)
    settings = dict(base=str(base), engine=engine, device=device, output=str(out), max_steps=steps, grad_accum=1,
                    save_steps=10**6, warmup_ratio=0.0, learning_rate=1e-4, seed=0,
                    gradient_checkpointing=not args.no_gradient_checkpointing, load_in_4bit=args.load_in_4bit)
    if args.attention:
        settings["attention"] = args.attention
    sequences = None
    if workload == "synthetic":
        settings.update(batch_size=args.batch, max_length=args.length, dataset="synthetic")
        sequences = synthetic_sequences(args.batch * steps, args.length, 201088)
    else:
        if dataset is None:
            raise SystemExit("the real workload needs --dataset or --characters")
        settings.update(batch_size=args.real_batch, max_length=args.real_length, dataset=str(dataset))
    config = tc.resolve({}, settings)
    prebuilt = None
    if engine == "hf":
        attention = args.attention or ("flex_attention" if device == "cuda" else "eager")
        prebuilt = build_random_model(model_config(args.layers, args.tiny), device, attention)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    records: list[dict] = []
    profiler = None
    if args.profile_steps:
        from trainer.profiling import StepProfiler

        profiler = StepProfiler(args.warmup, args.profile_steps, device == "cuda",
                                Path(f"{args.out}-profile-{engine}-{workload}.txt"),
                                f"{engine} {workload}: batch {config.batch_size} x {config.max_length}")

    def on_step(record: dict) -> None:
        records.append(record)
        if profiler:
            profiler.step()

    started = time.time()
    result = run_training(config, sequences=sequences, on_step=on_step,
                          engine=HFEngine(prebuilt) if prebuilt is not None else None)
    wall = time.time() - started
    profile = profiler.finish() if profiler else None
    measured = [r for r in records if r["step"] > args.warmup and r.get("tokens_per_second")]
    rates = [r["tokens_per_second"] for r in measured]
    details = next((e for e in _events(out) if e.get("message") == "details"), {})
    start = next((e for e in _events(out) if e["event"] == "start"), {})
    return {
        "engine": engine, "workload": workload, "layers": args.layers, "device": device,
        "attention": (details.get("engine") or {}).get("attention"),
        "packing": ((start.get("config") or {}).get("resolved") or {}).get("packing"),
        "batch": config.batch_size, "max_length": config.max_length,
        "steps_measured": len(rates),
        "tokens_per_second_median": round(statistics.median(rates), 1) if rates else None,
        "tokens_per_second_mean": round(statistics.fmean(rates), 1) if rates else None,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "real_token_share": round(statistics.fmean(r["real_token_share"] for r in measured), 4) if measured else None,
        "first_loss": records[0]["loss"] if records else None,
        "load_seconds": (details.get("engine") or {}).get("load_seconds"),
        "trainable_parameters": (details.get("engine") or {}).get("trainable_parameters"),
        "dataset_tokens": (details.get("data") or {}).get("tokens"),
        "dataset_trainable_tokens": (details.get("data") or {}).get("trainable_tokens"),
        "wall_seconds": round(wall, 1), "status": result.status, "profile": profile,
    }


def _pythonpath() -> str:
    """The project first, then whatever the caller had (a --target install of the wheelhouse, say)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def _events(out: Path) -> list[dict]:
    from haruhi_tui.core.events import read_events

    return read_events(out)[0]


def worker(args) -> None:
    scratch = Path(args.scratch)
    engine = args.worker
    if engine == "unsloth":
        import unsloth  # noqa: F401  (before transformers, as in the trainer)
    base = Path(args.base_dir)
    dataset = Path(args.dataset_path) if args.dataset_path else None
    results = []
    for workload in args.workloads.split(","):
        try:
            results.append(run_workload(engine, workload, args, base, dataset, scratch))
        except Exception as exc:  # keep the other measurements
            results.append({"engine": engine, "workload": workload, "error": f"{type(exc).__name__}: {exc}"[:500]})
            import traceback

            traceback.print_exception(exc.__context__ or exc)  # the cause behind a one-line HaruhiError
        print(json.dumps(results[-1]), flush=True)
        release_gpu_memory()
    Path(args.results).write_text(json.dumps(results), encoding="utf-8")


# -- report -----------------------------------------------------------------------------------------

def versions() -> dict:
    found = {"python": platform.python_version()}
    from importlib import metadata

    for name in ("torch", "transformers", "peft", "accelerate", "trl", "unsloth", "unsloth_zoo", "datasets"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def machine(device: str) -> str:
    text = f"{socket.gethostname()}, {os.cpu_count()} CPU cores"
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        text = f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB), " + text
    return text


def epoch_estimate(results: list[dict]) -> list[str]:
    lines = []
    for row in results:
        if row.get("workload") != "real" or not row.get("tokens_per_second_median") or not row.get("dataset_tokens"):
            continue
        one = row["dataset_tokens"] / row["tokens_per_second_median"]
        eight = one / (8 * DDP_EFFICIENCY)
        lines.append(f"{row['engine']}: one haruhi_train epoch ({row['dataset_tokens']:,} tokens) ~ {one / 60:.1f} min "
                     f"on 1 GPU, ~ {eight / 60:.1f} min on 8 GPUs (assuming {DDP_EFFICIENCY:.0%} data-parallel "
                     f"efficiency)" + (f" [layers: {row['layers']}, not the full 24]" if row["layers"] != 24 else ""))
    return lines


def write_report(out: Path, record: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    columns = ["engine", "workload", "layers", "attention", "packing", "batch", "max_length",
               "tokens_per_second_median", "peak_gpu_memory_gib", "real_token_share", "first_loss", "load_seconds",
               "error"]
    lines = [f"# haruhi train benchmark, {record['date']}", "", f"- machine: {record['machine']}",
             f"- command: `{record['command']}`",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
             "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in record["results"]:
        lines.append("| " + " | ".join(str(row.get(c, "")) if row.get(c) is not None else "" for c in columns) + " |")
    lines += ["", *[f"- {line}" for line in record["epoch_estimates"]], ""]
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="both", choices=["unsloth", "hf", "both"])
    parser.add_argument("--workloads", default="synthetic,real")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny gpt-oss widths (CPU smoke run)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per workload")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the figures (compilation, warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--real-batch", type=int, default=4)
    parser.add_argument("--real-length", type=int, default=2048)
    parser.add_argument("--attention", default=None, help="hf engine attention (default flex_attention on CUDA)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--dataset", default=None, help="haruhi_train.json for the real workload")
    parser.add_argument("--characters", default=None, help="ChatHaruhi characters folder: build haruhi_train here")
    parser.add_argument("--max-samples", type=int, default=0, help="CPU runs: use only this many samples")
    parser.add_argument("--tokenizer", default=None, help="o200k_harmony tokenizer folder, tokenizer.json or .json.gz")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="profile this many steps after the warm-up (CUDA): OUT-profile-ENGINE-WORKLOAD.txt")
    parser.add_argument("--scratch", default="/tmp/haruhi-bench-train")
    parser.add_argument("--out", required=True, help="report path without suffix: writes OUT.json and OUT.md")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--base-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dataset-path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.tiny:  # seconds on a CPU: short rows, few samples
        args.layers = 2 if args.layers == 24 else args.layers
        args.batch, args.length, args.real_batch = min(args.batch, 2), min(args.length, 128), 1
        args.max_samples = args.max_samples or 8
    if args.device == "cpu" and args.engine != "hf":
        args.engine = "hf"  # Unsloth is CUDA-only
    engines = ["hf", "unsloth"] if args.engine == "both" else [args.engine]
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    base = prepare_base(scratch, args.layers, args.tiny, args.tokenizer, "unsloth" in engines, args.device)
    dataset = None
    if "real" in args.workloads.split(","):
        dataset = prepare_dataset(scratch, args.dataset, args.characters)
        if dataset is None and args.device == "cpu":
            from haruhi_tui.core.paths import bundled_characters_dir

            dataset = prepare_dataset(scratch, None, str(bundled_characters_dir()))
        if dataset is not None and args.max_samples:
            trimmed = scratch / f"haruhi_train_first_{args.max_samples}.json"
            trimmed.write_text(json.dumps(json.loads(dataset.read_text(encoding="utf-8"))[:args.max_samples],
                                          ensure_ascii=False), encoding="utf-8")
            dataset = trimmed
    results: list[dict] = []
    for engine in engines:
        results_file = scratch / f"results-{engine}.json"
        results_file.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--base-dir", str(base),
               "--results", str(results_file), "--out", args.out, *_passthrough(args)]
        if dataset:
            cmd += ["--dataset-path", str(dataset)]
        print(f"== {engine}: {' '.join(cmd)}", flush=True)
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": _pythonpath()})
        if results_file.is_file():
            results += json.loads(results_file.read_text(encoding="utf-8"))
        else:
            results.append({"engine": engine, "error": f"worker exited with {done.returncode} before reporting"})
    record = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(args.device),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "versions": versions(),
              "results": results, "epoch_estimates": epoch_estimate(results)}
    write_report(Path(args.out), record)
    for row in results:
        print(json.dumps(row))
    for line in record["epoch_estimates"]:
        print(line)
    print(f"report: {Path(args.out).with_suffix('.json')} and {Path(args.out).with_suffix('.md')}")


def _passthrough(args) -> list[str]:
    flags = ["--workloads", args.workloads, "--layers", str(args.layers), "--device", args.device,
             "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
             "--length", str(args.length), "--real-batch", str(args.real_batch),
             "--real-length", str(args.real_length), "--scratch", args.scratch]
    if args.tiny:
        flags.append("--tiny")
    if args.attention:
        flags += ["--attention", args.attention]
    if args.no_gradient_checkpointing:
        flags.append("--no-gradient-checkpointing")
    if args.load_in_4bit:
        flags.append("--load-in-4bit")
    if args.profile_steps:
        flags += ["--profile-steps", str(args.profile_steps)]
    return flags


if __name__ == "__main__":
    main()
