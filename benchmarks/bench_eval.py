"""How fast `haruhi eval` predicts haruhi_val on the transformers path: gpt-oss-20b architecture, random bf16
weights built on the GPU, real haruhi_val prompts, our batched generator (trainer.generation.hf.HFGenerator).

Random weights never say <|return|>, so reply lengths are simulated: ``--stop label`` ends each reply after
as many tokens as a fine-tuned model's reply to that sample would have (``<|channel|>final<|message|>`` +
the reference line + ``<|return|>``); ``--stop fixed`` generates ``--max-new-tokens`` for every sample.

Prompts, in order of preference:
  --prompts FILE      token ids saved earlier with --save-prompts (jsonl; needs nothing else)
  --dataset FILE      a haruhi_val.json (tokenized with quicktok's o200k_harmony, or --tokenizer DIR)
  --characters DIR    build haruhi_val from ChatHaruhi folders first (needs jieba), like `haruhi data build`

Examples (from the project root, on the GPU machine):
  python benchmarks/bench_eval.py --characters ../shared/chatharuhi/characters --layers 4 --samples 256
  python benchmarks/bench_eval.py --characters ../shared/chatharuhi/characters --check \
      --out benchmarks/results/bench_eval.jsonl

Prints one JSON line per run (and appends it to --out): samples/s, prefill and decode split, peak memory.
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


class IdsOnlyTokenizer:
    """What HFGenerator needs from a tokenizer when prompts are already token ids and stops are simulated."""

    pad_token_id, eos_token_id, bos_token, chat_template = PAD_ID, RETURN_ID, None, None

    def __init__(self, decoder=None) -> None:
        self._decode = decoder

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._decode(list(ids)) if self._decode else ""


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


def build_model(layers: int, attn: str, experts: str | None, device: str = "cuda"):
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    from trainer.generation.sink_attention import SINK_ATTENTION, register_sink_attention

    if attn == SINK_ATTENTION:
        register_sink_attention()
    config = GptOssConfig(num_hidden_layers=layers, num_local_experts=32, num_experts_per_tok=4,
                          pad_token_id=PAD_ID, eos_token_id=RETURN_ID)
    kwargs = {"attn_implementation": attn, "dtype": torch.bfloat16}
    if experts:
        kwargs["experts_implementation"] = experts
    torch.manual_seed(0)
    with torch.device(device):
        model = GptOssForCausalLM._from_config(config, **kwargs)
    model.eval()
    return model


def check_attention(model, prompts) -> dict:
    """Our attention against transformers' eager one on real prompts, at layer 0 (before MoE routing, whose
    discrete choices amplify any bf16 rounding): each against a float32 run of the same layer."""
    import copy

    import torch

    from trainer.generation.sink_attention import register_sink_attention

    rows = sorted(prompts, key=lambda p: -len(p["ids"]))[:4]
    width = max(len(p["ids"]) for p in rows)
    device = model.device
    ids = torch.full((len(rows), width), PAD_ID, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for r, p in enumerate(rows):
        ids[r, width - len(p["ids"]):] = torch.tensor(p["ids"], device=device)
        mask[r, width - len(p["ids"]):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    attention = model.model.layers[0].self_attn
    before = model.config._attn_implementation
    captured: dict = {}

    def grab(module, args, kwargs, output):
        captured.setdefault("inputs", (args, kwargs))
        captured[model.config._attn_implementation] = output[0].float()

    hook = attention.register_forward_hook(grab, with_kwargs=True)
    with torch.inference_mode():
        model.set_attn_implementation("eager")
        model.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        model.set_attn_implementation(register_sink_attention())
        model.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        hook.remove()
        model.set_attn_implementation("eager")
        reference = copy.deepcopy(attention).float()
        args, kwargs = captured["inputs"]
        kwargs = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else
                      tuple(t.float() for t in v) if isinstance(v, tuple) else v) for k, v in kwargs.items()
                  if k != "past_key_values"}
        exact = reference(*(a.float() for a in args), **kwargs)[0].float()
        model.set_attn_implementation(before)
    real = mask.bool()
    scale = exact[real].abs().mean().item()
    result = {"layer0_attention_abs_mean": round(scale, 5)}
    for name in ("eager", "haruhi_sinks"):
        err = (captured[name][real] - exact[real]).abs()
        result[f"{name}_vs_fp32_max"] = round(err.max().item(), 5)
        result[f"{name}_vs_fp32_mean"] = round(err.mean().item(), 6)
    return result


def probe(model, rows_list, prompt_len: int, steps: int) -> list[dict]:
    """Decode-step and prefill cost at several batch sizes (random ids), with a profile of one decode step."""
    import torch
    from transformers import DynamicCache

    results = []
    for rows in rows_list:
        ids = torch.randint(0, 199000, (rows, prompt_len), device=model.device)
        mask = torch.ones_like(ids)
        positions = (mask.cumsum(-1) - 1)
        cache = DynamicCache(config=model.config)
        chunk = max(16, 32768 // rows)
        with torch.inference_mode():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for begin in range(0, prompt_len, chunk):
                end = min(prompt_len, begin + chunk)
                out = model(input_ids=ids[:, begin:end], attention_mask=mask[:, :end],
                            position_ids=positions[:, begin:end], past_key_values=cache, use_cache=True,
                            logits_to_keep=1)
            torch.cuda.synchronize()
            prefill = time.perf_counter() - t0
            token = out.logits[:, -1].argmax(-1)
            position = positions[:, -1:]
            times = []
            for step in range(steps):
                mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
                position = position + 1
                torch.cuda.synchronize()
                t1 = time.perf_counter()
                out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position, past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
                token = out.logits[:, -1].argmax(-1)
                token.tolist()
                times.append(time.perf_counter() - t1)
            entry = {"rows": rows, "prompt_len": prompt_len, "experts": model.config._experts_implementation,
                     "prefill_tokens_per_second": round(rows * prompt_len / prefill),
                     "decode_ms_per_step": round(sorted(times[2:])[len(times[2:]) // 2] * 1000, 2)}
            if rows == rows_list[0]:
                from torch.profiler import ProfilerActivity
                from torch.profiler import profile as torch_profile

                mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
                with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position + 1,
                                past_key_values=cache, use_cache=True, logits_to_keep=1)
                    out.logits[:, -1].argmax(-1).tolist()
                entry["profile"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14,
                                                             max_name_column_width=50)
        del cache, out
        torch.cuda.empty_cache()
        results.append(entry)
    return results


def bench_gguf(args) -> None:
    """llama.cpp path: the same prompts through GGUFGenerator with several --parallel values, prefix reuse on/off."""
    from haruhi_tui.core.prompt_format import conversation_from_messages
    from haruhi_tui.core.sharegpt import load_sharegpt
    from trainer.evaluate import stratified_indices
    from trainer.generation.decoding import DecodingOptions, Request
    from trainer.generation.gguf import GGUFGenerator, open_engine

    if not args.dataset:
        raise SystemExit("--gguf needs --dataset (a haruhi_val.json)")
    samples = load_sharegpt(args.dataset)
    chosen = stratified_indices(samples, args.samples or len(samples), args.seed)
    engine = open_engine(args.gguf, n_gpu_layers=-1 if args.device.startswith("cuda") else 0)
    probe = GGUFGenerator(engine, parallel=1)
    convs = {i: conversation_from_messages(samples[i].messages[:-1], samples[i].character) for i in chosen}
    requests = [Request(i, tuple(probe.encode(convs[i])[1])) for i in chosen]
    options = DecodingOptions(max_new_tokens=args.max_new_tokens)
    for parallel in [int(x) for x in args.parallel.split(",")]:
        for reuse in (False, True):
            generator = GGUFGenerator(engine, parallel=parallel, reuse_prefix=reuse)
            t0 = time.perf_counter()
            tokens = sum(c.tokens for c in generator.generate(requests, options))
            wall = time.perf_counter() - t0
            line = json.dumps({"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "bench": "bench_eval --gguf",
                               "model": str(args.gguf), "machine": platform.node(), "samples": len(requests),
                               "prompt_tokens": sum(len(r.ids) for r in requests), "generated_tokens": tokens,
                               "parallel": parallel, "prefix_reuse": reuse, "seconds": round(wall, 2),
                               "samples_per_second": round(len(requests) / wall, 3), "command": " ".join(sys.argv)})
            print(line, flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts")
    parser.add_argument("--dataset")
    parser.add_argument("--characters")
    parser.add_argument("--tokenizer", help="HF tokenizer folder (default: quicktok o200k_harmony)")
    parser.add_argument("--save-prompts", help="write the tokenized prompts (jsonl, .gz ok) and exit")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--layers", type=int, default=24,
                        help="decoder layers (24 = gpt-oss-20b; fewer for a quick run)")
    parser.add_argument("--samples", type=int, default=0, help="first N prompts (0: all of haruhi_val)")
    parser.add_argument("--batch-size", type=int, default=0, help="rows per batch (0: HFGenerator's automatic choice)")
    parser.add_argument("--prefill-tokens", type=int, default=0, help="tokens per prefill forward (0: default)")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--stop", choices=("label", "fixed"), default="label")
    parser.add_argument("--attn", default="haruhi_sinks", help="haruhi_sinks (ours), eager or flex_attention")
    parser.add_argument("--experts", default=None,
                        help="transformers experts implementation (default: grouped_mm if possible)")
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only to smoke-test the script")
    parser.add_argument("--check", action="store_true", help="also compare our attention with eager on 4 real prompts")
    parser.add_argument("--out", help="append the result line to this jsonl file")
    parser.add_argument("--probe", default="",
                        help="comma-separated batch sizes: time prefill and decode steps at each "
                        "(random ids, --probe-len tokens) instead of the haruhi_val run")
    parser.add_argument("--probe-len", type=int, default=1200)
    parser.add_argument("--gguf", help="instead: time the llama.cpp path on this GGUF (with --dataset, --samples)")
    parser.add_argument("--parallel", default="1,4", help="--gguf: comma-separated numbers of parallel sequences")
    args = parser.parse_args()
    if args.gguf:
        bench_gguf(args)
        return
    if args.probe:
        import torch

        model = build_model(args.layers, args.attn, args.experts, args.device)
        for entry in probe(model, [int(x) for x in args.probe.split(",")], args.probe_len, 12):
            table = entry.pop("profile", None)
            print(json.dumps(entry))
            if table:
                print(table)
        return

    prompts = load_prompts(args)
    if args.save_prompts:
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

    from trainer.generation.decoding import DecodingOptions, Request
    from trainer.generation.hf import HFGenerator
    from trainer.generation.stops import FixedLengthStop

    cuda = args.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    started = time.perf_counter()
    model = build_model(args.layers, args.attn, args.experts, args.device)
    sync()
    build_seconds = time.perf_counter() - started
    result: dict = {}
    if args.check:
        result["attention_check"] = check_attention(model, prompts)
    generator = HFGenerator(model, IdsOnlyTokenizer(), "harmony", path=f"random gpt-oss-20b ({args.layers} layers)",
                            batch_size=args.batch_size or None, prefill_tokens=args.prefill_tokens or None)
    generator.profile = True
    requests = [Request(p["index"], tuple(p["ids"])) for p in prompts]
    lengths = {p["index"]: (p["reply_tokens"] if args.stop == "label" else args.max_new_tokens) for p in prompts}
    options = DecodingOptions(max_new_tokens=args.max_new_tokens)

    def stop(request):
        return FixedLengthStop(min(lengths[request.index], args.max_new_tokens))

    warm = sorted(requests, key=lambda r: -len(r.ids))[: min(len(requests), generator.batch_size)]
    for _ in generator.generate(warm, DecodingOptions(max_new_tokens=4), stop_factory=lambda r: FixedLengthStop(4)):
        pass
    sync()
    generator.stats = {k: 0 if isinstance(v, int) else 0.0 for k, v in generator.stats.items()}
    generator.evicted = 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    generated = 0
    first = None
    for completion in generator.generate(requests, options, stop_factory=stop):
        generated += completion.tokens
        first = first or time.perf_counter() - t0
    sync()
    wall = time.perf_counter() - t0
    stats = generator.stats
    result.update({
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "bench": "bench_eval",
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "layers": args.layers, "attention": model.config._attn_implementation,
        "experts": getattr(model.config, "_experts_implementation", None),
        "samples": len(requests), "batch_size": generator.batch_size,
        "prefill_tokens_per_forward": generator.prefill_tokens,
        "stop": args.stop, "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": sum(len(r.ids) for r in requests), "generated_tokens": generated,
        "seconds": round(wall, 2), "samples_per_second": round(len(requests) / wall, 2),
        "prefill_seconds": round(stats["prefill_seconds"], 2),
        "prefill_tokens_per_second": round(stats["prefill_tokens"] / max(stats["prefill_seconds"], 1e-9)),
        "padding_share": round(1 - stats["prefill_tokens"] / max(stats["padded_tokens"], 1), 3),
        "decode_seconds": round(wall - stats["prefill_seconds"], 2), "decode_steps": stats["decode_steps"],
        "decode_ms_per_step": round((wall - stats["prefill_seconds"]) / max(stats["decode_steps"], 1) * 1000, 2),
        "batches": stats["batches"], "evicted": generator.evicted, "first_result_seconds": round(first or 0, 2),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
        "model_build_seconds": round(build_seconds, 1),
        "command": " ".join(sys.argv),
    })
    line = json.dumps(result, ensure_ascii=False)
    print(line)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
