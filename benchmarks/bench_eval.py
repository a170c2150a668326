"""How fast `haruhi eval` predicts haruhi_val on the transformers path: gpt-oss-20b architecture, random bf16
weights built on the GPU, real haruhi_val prompts, the old (batched) and the new (continuous, shared
prefixes, CUDA graphs) engine of trainer.generation.hf.HFGenerator, one after the other on the same model.

Commands for the GPU machine (one H100/H200; from the project root). Prompts are saved once on the CPU machine
(needs jieba and quicktok, 40 s) and carried as an untracked file:
  python benchmarks/bench_eval.py --characters ../shared/chatharuhi/characters \
      --save-prompts .bench/haruhi_val_prompts.jsonl.gz
  # 1. old and new engine over all of haruhi_val (2,034 samples; about 6-7 minutes in all on an H100/H200;
  #    the old engine alone was 165 s there; split into --paths old and --paths new,new-fusedmoe if need be):
  python benchmarks/bench_eval.py --prompts .bench/haruhi_val_prompts.jsonl.gz --paths old,new,new-fusedmoe \
      --out benchmarks/results/bench_eval.jsonl
  # 2. what each part gives (sharing off; CUDA graphs off; reference attention instead of FlashAttention;
  #    6-8 minutes, the reference attention is the slow one):
  python benchmarks/bench_eval.py --prompts .bench/haruhi_val_prompts.jsonl.gz \
      --paths new-noshare,new-nographs,new-reference --out benchmarks/results/bench_eval.jsonl
  # 3. where the new engine's GPU time goes (torch profiler over 256 samples, top operators in the JSON):
  python benchmarks/bench_eval.py --prompts .bench/haruhi_val_prompts.jsonl.gz --paths new --samples 256 \
      --profile --out benchmarks/results/bench_eval.jsonl
  # the engine's CUDA-only paths against their references:
  python -m pytest -q tests/trainer/test_eval_shared.py -k cuda -p no:cacheprovider

Random weights never say <|return|>, so reply lengths are simulated: ``--stop label`` ends each reply after
as many tokens as a fine-tuned model's reply to that sample would have (``<|channel|>final<|message|>`` +
the reference line + ``<|return|>``); ``--stop fixed`` generates ``--max-new-tokens`` for every sample.

Prompts, in order of preference: --prompts FILE (token ids saved with --save-prompts), --dataset FILE (a
haruhi_val.json, tokenized with quicktok's o200k_harmony or --tokenizer DIR), --characters DIR (builds
haruhi_val like `haruhi data build`). Prints one JSON line per path (appended to --out): samples/s, prefill
and decode time, tokens computed against real ones, peak memory. ``--shape tiny --device cpu`` runs the
same on a tiny gpt-oss on the CPU (the smoke test). ``--gguf FILE`` times the llama.cpp path instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAD_ID, RETURN_ID = 199999, 200002  # <|endoftext|>, <|return|>
#: What each path runs: the engine of HFGenerator and the continuous engine's switches.
PATHS = {
    "old": {"engine": "batched"},
    "new": {"engine": "continuous"},
    "new-noshare": {"engine": "continuous", "share_prefixes": False},
    "new-nographs": {"engine": "continuous", "cuda_graphs": False},
    "new-reference": {"engine": "continuous", "kernel": "reference"},
    "new-fusedmoe": {"engine": "continuous", "fused_experts": True},
}
#: A tiny gpt-oss (the tests' shape) for CPU smoke runs; the vocabulary stays real.
TINY_SHAPE = dict(hidden_size=64, head_dim=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                  num_local_experts=4, num_experts_per_tok=2, sliding_window=128)


class IdsOnlyTokenizer:
    """What HFGenerator needs from a tokenizer when prompts are already token ids and stops are simulated."""

    pad_token_id, eos_token_id, bos_token, chat_template = PAD_ID, RETURN_ID, None, None

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return ""


def harmony_encoder(tokenizer_dir: str | None):
    """(encode, decode) for harmony text: an HF tokenizer folder, else quicktok's o200k_harmony."""
    if tokenizer_dir:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        return (lambda text: tok(text, add_special_tokens=False)["input_ids"]), (lambda ids: tok.decode(ids))
    import quicktok

    enc = quicktok.get_encoding("o200k_harmony")
    return (lambda text: enc.encode(text, allowed_special="all")), enc.decode


def load_prompts(args) -> list[dict]:
    """[{"index", "ids", "reply_tokens", "character"}] for haruhi_val."""
    if args.prompts:
        opener = gzip.open if str(args.prompts).endswith(".gz") else open
        with opener(args.prompts, "rt", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    from haruhi_tui.core.prompt_format import conversation_from_messages, render_text

    if args.dataset:
        from haruhi_tui.core.sharegpt import load_sharegpt

        samples = load_sharegpt(args.dataset)
    elif args.characters:
        from haruhi_tui.core.dataset import BuildOptions, build

        samples = build(args.characters, BuildOptions(seed=args.seed)).val
    else:
        raise SystemExit("pass --prompts, --dataset or --characters")
    encode, _ = harmony_encoder(args.tokenizer)
    prompts = []
    for i, sample in enumerate(samples):
        conv = conversation_from_messages(sample.messages[:-1], sample.character or "assistant")
        ids = encode(render_text(conv, "harmony", add_generation_prompt=True))
        reply = encode("<|channel|>final<|message|>" + sample.target + "<|return|>")
        prompts.append({"index": i, "ids": ids, "reply_tokens": len(reply), "character": sample.character})
    return prompts


def build_model(layers: int, attn: str, experts: str | None, device: str = "cuda", shape: str = "full"):
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    from trainer.generation.sink_attention import SINK_ATTENTION, register_sink_attention

    if attn == SINK_ATTENTION:
        register_sink_attention()
    extra = TINY_SHAPE if shape == "tiny" else {"num_local_experts": 32, "num_experts_per_tok": 4}
    config = GptOssConfig(num_hidden_layers=layers, pad_token_id=PAD_ID, eos_token_id=RETURN_ID, **extra)
    kwargs = {"attn_implementation": attn, "dtype": torch.bfloat16}
    if experts:
        kwargs["experts_implementation"] = experts
    torch.manual_seed(0)
    with torch.device(device):
        model = GptOssForCausalLM._from_config(config, **kwargs)
    model.eval()
    return model


def generator_for(path: str, model, args):
    from trainer.generation.hf import HFGenerator

    return HFGenerator(model, IdsOnlyTokenizer(), "harmony", path=f"random gpt-oss ({args.layers} layers)",
                       batch_size=args.batch_size or None, prefill_tokens=args.prefill_tokens or None, **PATHS[path])


def run_path(path: str, model, prompts: list[dict], args) -> dict:
    """One timed generation over ``prompts`` with the path's engine (after a short warm-up)."""
    import torch

    from trainer.generation.decoding import DecodingOptions, Request
    from trainer.generation.stops import FixedLengthStop

    cuda = args.device.startswith("cuda")
    generator = generator_for(path, model, args)
    generator.profile = True  # the batched engine syncs once per batch so its prefill time is exact
    requests = [Request(p["index"], tuple(p["ids"])) for p in prompts]
    lengths = {p["index"]: min(p["reply_tokens"] if args.stop == "label" else args.max_new_tokens,
                               args.max_new_tokens) for p in prompts}
    options = DecodingOptions(max_new_tokens=args.max_new_tokens)
    warm = sorted(requests, key=lambda r: -len(r.ids))[:8]
    for _ in generator.generate(warm, DecodingOptions(max_new_tokens=4), stop_factory=lambda r: FixedLengthStop(4)):
        pass
    generator.stats = {k: 0 if isinstance(v, int) else 0.0 for k, v in generator.stats.items()}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    generated, first = 0, None
    for completion in generator.generate(requests, options, stop_factory=lambda r: FixedLengthStop(lengths[r.index])):
        generated += completion.tokens
        first = first or time.perf_counter() - started
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    result = {"path": path, "engine": generator.engine_name, "samples": len(requests), "seconds": round(wall, 2),
              "samples_per_second": round(len(requests) / wall, 2), "first_result_seconds": round(first or 0, 2),
              "prompt_tokens": sum(len(r.ids) for r in requests), "generated_tokens": generated}
    result.update(continuous_figures(generator, wall) if generator.continuous else batched_figures(generator, wall))
    result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None
    if args.profile:
        result["profile"] = profile_path(generator, requests[: args.profile_samples], options, lengths, cuda)
    del generator
    if cuda:
        torch.cuda.empty_cache()
    return result


def continuous_figures(generator, wall: float) -> dict:
    stats = generator.continuous.stats
    decode_steps = max(stats["decode_steps"], 1)
    return {"slots": stats["slots"], "attention_kernel": stats["kernel"], "cuda_graphs": stats["cuda_graphs"],
            "experts_kernel": stats["experts"],
            "setup_seconds": stats["setup_seconds"], "notes": generator.continuous.notes,
            "prefill_tokens_computed": stats["prefill_tokens"], "prefill_tokens_shared": stats["shared_tokens"],
            "prefill_seconds": round(stats["prefill_seconds"], 2),
            "prefill_tokens_per_second": round(stats["prefill_tokens"] / max(stats["prefill_seconds"], 1e-9)),
            "prefill_forwards": stats["prefill_forwards"],
            "decode_seconds": round(stats["decode_seconds"], 2), "decode_steps": stats["decode_steps"],
            "graph_steps": stats["graph_steps"],
            "decode_ms_per_step": round(stats["decode_seconds"] / decode_steps * 1000, 2),
            "decode_rows_computed": stats["decode_rows_computed"],
            "other_seconds": round(wall - stats["prefill_seconds"] - stats["decode_seconds"], 2)}


def batched_figures(generator, wall: float) -> dict:
    stats = generator.stats
    decode_seconds = wall - stats["prefill_seconds"]
    return {"batch_size": generator.batch_size, "attention_kernel": generator.model.config._attn_implementation,
            "prefill_tokens_computed": stats["padded_tokens"], "prefill_tokens_real": stats["prefill_tokens"],
            "prefill_seconds": round(stats["prefill_seconds"], 2),
            "prefill_tokens_per_second": round(stats["padded_tokens"] / max(stats["prefill_seconds"], 1e-9)),
            "decode_seconds": round(decode_seconds, 2), "decode_steps": stats["decode_steps"],
            "decode_ms_per_step": round(decode_seconds / max(stats["decode_steps"], 1) * 1000, 2),
            "decode_rows_computed": stats["decode_rows"], "batches": stats["batches"], "evicted": generator.evicted}


def profile_path(generator, requests, options, lengths, cuda: bool) -> str:
    """The top operators of a generation over ``requests`` under torch's profiler, as a table."""
    from torch.profiler import ProfilerActivity, profile

    from trainer.generation.stops import FixedLengthStop

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in generator.generate(requests, options, stop_factory=lambda r: FixedLengthStop(lengths[r.index])):
            pass
    return prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=25,
                                     max_name_column_width=60)


def bench_gguf(args) -> None:
    """llama.cpp path: the same prompts through GGUFGenerator with several --parallel values, prefix reuse off,
    on without waiting (before) and on with waiting for a prefix still being computed (after)."""
    from haruhi_tui.core.prompt_format import conversation_from_messages
    from haruhi_tui.core.sharegpt import load_sharegpt
    from trainer.evaluate import stratified_indices
    from trainer.generation.decoding import DecodingOptions, Request
    from trainer.generation.gguf import GGUFGenerator, open_engine

    if not args.dataset:
        raise SystemExit("--gguf needs --dataset (a haruhi_val.json)")
    samples = load_sharegpt(args.dataset)
    n = args.samples or len(samples)
    chosen = stratified_indices(samples, n, args.seed) if args.pick == "stratified" else list(range(n))
    engine = open_engine(args.gguf, n_gpu_layers=-1 if args.device.startswith("cuda") else 0)
    probe = GGUFGenerator(engine, parallel=1)
    convs = {i: conversation_from_messages(samples[i].messages[:-1], samples[i].character) for i in chosen}
    requests = [Request(i, tuple(probe.encode(convs[i])[1])) for i in chosen]
    options = DecodingOptions(max_new_tokens=args.max_new_tokens)
    modes = {"off": dict(reuse_prefix=False), "on-nowait": dict(reuse_prefix=True, wait_for_prefix=False),
             "on": dict(reuse_prefix=True, wait_for_prefix=True)}
    for parallel in [int(x) for x in args.parallel.split(",")]:
        for mode in args.reuse.split(","):
            generator = GGUFGenerator(engine, parallel=parallel, **modes[mode])
            t0 = time.perf_counter()
            tokens = sum(c.tokens for c in generator.generate(requests, options))
            wall = time.perf_counter() - t0
            emit(args, {"bench": "bench_eval --gguf", "model": str(args.gguf), "samples": len(requests),
                        "prompt_tokens": sum(len(r.ids) for r in requests), "generated_tokens": tokens,
                        "pick": args.pick, "parallel": parallel, "prefix_reuse": mode,
                        "prompt_tokens_computed": generator.stats["computed"],
                        "seconds": round(wall, 2), "samples_per_second": round(len(requests) / wall, 3)})


def emit(args, record: dict) -> None:
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
              **record, "command": " ".join(sys.argv)}
    line = json.dumps(record, ensure_ascii=False)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts")
    parser.add_argument("--dataset")
    parser.add_argument("--characters")
    parser.add_argument("--tokenizer", help="HF tokenizer folder (default: quicktok o200k_harmony)")
    parser.add_argument("--save-prompts", help="write the tokenized prompts (jsonl, .gz ok) and exit")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--paths", default="old,new", help=f"comma-separated, in order: {', '.join(PATHS)}")
    parser.add_argument("--layers", type=int, default=24,
                        help="decoder layers (24 = gpt-oss-20b; fewer for a quick run)")
    parser.add_argument("--shape", choices=("full", "tiny"), default="full",
                        help="full: gpt-oss-20b widths; tiny: the tests' tiny gpt-oss (CPU smoke runs)")
    parser.add_argument("--samples", type=int, default=0, help="first N prompts (0: all of haruhi_val)")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="old: rows per batch; new: slots (0: each engine's automatic choice)")
    parser.add_argument("--prefill-tokens", type=int, default=0, help="tokens per prefill forward (0: default)")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--stop", choices=("label", "fixed"), default="label")
    parser.add_argument("--attn", default="haruhi_sinks", help="the old engine's attention: haruhi_sinks, eager")
    parser.add_argument("--experts", default=None,
                        help="transformers experts implementation (default: grouped_mm if possible)")
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only to smoke-test the script")
    parser.add_argument("--profile", action="store_true", help="also profile each path on --profile-samples samples")
    parser.add_argument("--profile-samples", type=int, default=256)
    parser.add_argument("--check", action="store_true",
                        help="also compare the old engine's attention with eager on 4 real prompts")
    parser.add_argument("--out", help="append the result lines to this jsonl file")
    parser.add_argument("--probe", default="",
                        help="comma-separated batch sizes: time the old engine's prefill and decode steps at each "
                        "(random ids, --probe-len tokens) instead of the haruhi_val run")
    parser.add_argument("--probe-len", type=int, default=1200)
    parser.add_argument("--gguf", help="instead: time the llama.cpp path on this GGUF (with --dataset, --samples)")
    parser.add_argument("--parallel", default="1,4", help="--gguf: comma-separated numbers of parallel sequences")
    parser.add_argument("--pick", choices=("stratified", "first"), default="stratified",
                        help="--gguf: which --samples (like haruhi eval --sample N, or --limit N)")
    parser.add_argument("--reuse", default="off,on-nowait,on",
                        help="--gguf: prefix reuse modes (off; on-nowait: the old reuse; on: waits for a prefix)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.paths.split(",") if p not in PATHS]
    if unknown:
        parser.error(f"unknown path(s) {', '.join(unknown)}: pick from {', '.join(PATHS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.gguf:
        bench_gguf(args)
        return
    if args.probe:
        from bench_eval_probes import probe

        model = build_model(args.layers, args.attn, args.experts, args.device, args.shape)
        for entry in probe(model, [int(x) for x in args.probe.split(",")], args.probe_len, 12):
            table = entry.pop("profile", None)
            print(json.dumps(entry))
            if table:
                print(table)
        return
    prompts = load_prompts(args)
    if args.save_prompts:
        Path(args.save_prompts).parent.mkdir(parents=True, exist_ok=True)
        opener = gzip.open if args.save_prompts.endswith(".gz") else open
        with opener(args.save_prompts, "wt", encoding="utf-8") as fh:
            for p in prompts:
                fh.write(json.dumps(p, ensure_ascii=False) + "\n")
        print(f"saved {len(prompts)} prompts to {args.save_prompts}")
        return
    if args.samples:
        prompts = prompts[: args.samples]

    import torch
    import transformers

    cuda = args.device.startswith("cuda")
    started = time.perf_counter()
    model = build_model(args.layers, args.attn, args.experts, args.device, args.shape)
    if cuda:
        torch.cuda.synchronize()
    common = {"bench": "bench_eval", "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "python": platform.python_version(), "layers": args.layers, "shape": args.shape,
              "experts": getattr(model.config, "_experts_implementation", None), "stop": args.stop,
              "max_new_tokens": args.max_new_tokens, "model_build_seconds": round(time.perf_counter() - started, 1)}
    if args.check:
        from bench_eval_probes import check_attention

        common["attention_check"] = check_attention(model, prompts)
    for path in args.paths.split(","):
        try:
            emit(args, {**common, **run_path(path, model, prompts, args)})
        except Exception as exc:  # noqa: BLE001 - one path failing must not lose the others' figures
            emit(args, {**common, "path": path, "error": f"{type(exc).__name__}: {exc}"[:2000]})
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
