"""Time and peak memory of ``haruhi-convert`` on a full-size random gpt-oss-20b + LoRA r=16.

Builds the checkpoint itself, shard by shard and tensor by tensor (never more than one chunk of one tensor
in memory): the original OpenAI MXFP4 layout (experts as ``*_blocks``/``*_scales``, about 13 GB) and/or
bf16 (about 39 GB), the real tokenizer (o200k_harmony, rebuilt from quicktok by tests/tiny_models.py),
and a PEFT-layout LoRA adapter of rank 16 on q/k/v/o and the expert weights (``target_parameters``).
Then runs ``haruhi-convert`` once per requested output type in a child process and records wall time,
the child's peak RSS (``wait4``), output size and throughput. Random weights measure speed and memory
honestly, not quality.

    python benchmarks/bench_convert.py --layers 2                     # a quick check at reduced size
    python benchmarks/bench_convert.py --workdir /tmp/bench --types mxfp4,q8_0   # the full 20B, MXFP4 base

Mind the disk: MXFP4 base 13 GB + adapter 0.4 GB + output (mxfp4 12 GB, q8_0 22 GB, bf16 39 GB);
each output is deleted after it is measured. ``--keep`` keeps checkpoints and outputs, and a later run with
the same ``--workdir`` reuses the checkpoints (to split the work across commands with a time limit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))

# openai/gpt-oss-20b
HIDDEN, FF, HEADS, KV_HEADS, HEAD_DIM, EXPERTS, TOP_K, VOCAB = 2880, 2880, 64, 8, 64, 32, 4, 201088
CHUNK = 1 << 24


def config(layers: int, mxfp4: bool) -> dict:
    cfg = {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True,
        "attention_dropout": 0.0, "head_dim": HEAD_DIM, "hidden_act": "silu", "hidden_size": HIDDEN,
        "initializer_range": 0.02, "intermediate_size": FF,
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        "max_position_embeddings": 131072, "num_attention_heads": HEADS, "num_experts_per_tok": TOP_K,
        "num_hidden_layers": layers, "num_key_value_heads": KV_HEADS, "num_local_experts": EXPERTS,
        "rms_norm_eps": 1e-05, "router_aux_loss_coef": 0.9, "sliding_window": 128, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                            "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 4096},
        "vocab_size": VOCAB, "dtype": "bfloat16",
        "bos_token_id": 199998, "eos_token_id": 200002, "pad_token_id": 199999,
    }
    if mxfp4:
        cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    return cfg


# -- a streaming safetensors writer ------------------------------------------------------------------

def normal_bf16(shape, std):
    def chunks():
        n = math.prod(shape)
        for start in range(0, n, CHUNK):
            yield (torch.randn(min(CHUNK, n - start)) * std).to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    return "BF16", shape, chunks


def uniform_u8(shape, low, high):
    def chunks():
        n = math.prod(shape)
        for start in range(0, n, CHUNK):
            yield torch.randint(low, high, (min(CHUNK, n - start),), dtype=torch.uint8).numpy().tobytes()
    return "U8", shape, chunks


def write_safetensors(path: Path, tensors: dict) -> int:
    sizes = {"BF16": 2, "U8": 1, "F32": 4}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape, _) in tensors.items():
        nbytes = math.prod(shape) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        for _, (_, _, chunks) in tensors.items():
            for data in chunks():
                fh.write(data)
    os.replace(tmp, path)
    return offset


def layer_tensors(i: int, mxfp4: bool) -> dict:
    p = f"model.layers.{i}."
    t = {
        p + "input_layernorm.weight": normal_bf16((HIDDEN,), 0.1),
        p + "post_attention_layernorm.weight": normal_bf16((HIDDEN,), 0.1),
        p + "self_attn.q_proj.weight": normal_bf16((HEADS * HEAD_DIM, HIDDEN), 0.02),
        p + "self_attn.q_proj.bias": normal_bf16((HEADS * HEAD_DIM,), 0.02),
        p + "self_attn.k_proj.weight": normal_bf16((KV_HEADS * HEAD_DIM, HIDDEN), 0.02),
        p + "self_attn.k_proj.bias": normal_bf16((KV_HEADS * HEAD_DIM,), 0.02),
        p + "self_attn.v_proj.weight": normal_bf16((KV_HEADS * HEAD_DIM, HIDDEN), 0.02),
        p + "self_attn.v_proj.bias": normal_bf16((KV_HEADS * HEAD_DIM,), 0.02),
        p + "self_attn.o_proj.weight": normal_bf16((HIDDEN, HEADS * HEAD_DIM), 0.02),
        p + "self_attn.o_proj.bias": normal_bf16((HIDDEN,), 0.02),
        p + "self_attn.sinks": normal_bf16((HEADS,), 1.0),
        p + "mlp.router.weight": normal_bf16((EXPERTS, HIDDEN), 0.02),
        p + "mlp.router.bias": normal_bf16((EXPERTS,), 0.02),
        p + "mlp.experts.gate_up_proj_bias": normal_bf16((EXPERTS, 2 * FF), 0.02),
        p + "mlp.experts.down_proj_bias": normal_bf16((EXPERTS, HIDDEN), 0.02),
    }
    if mxfp4:  # (E, out, in/32, 16) blocks, (E, out, in/32) E8M0 scales around 2**-6
        t[p + "mlp.experts.gate_up_proj_blocks"] = uniform_u8((EXPERTS, 2 * FF, HIDDEN // 32, 16), 0, 256)
        t[p + "mlp.experts.gate_up_proj_scales"] = uniform_u8((EXPERTS, 2 * FF, HIDDEN // 32), 118, 123)
        t[p + "mlp.experts.down_proj_blocks"] = uniform_u8((EXPERTS, HIDDEN, FF // 32, 16), 0, 256)
        t[p + "mlp.experts.down_proj_scales"] = uniform_u8((EXPERTS, HIDDEN, FF // 32), 118, 123)
    else:  # (E, in, out)
        t[p + "mlp.experts.gate_up_proj"] = normal_bf16((EXPERTS, HIDDEN, 2 * FF), 0.02)
        t[p + "mlp.experts.down_proj"] = normal_bf16((EXPERTS, FF, HIDDEN), 0.02)
    return t


def build_checkpoint(out: Path, layers: int, mxfp4: bool) -> dict:
    """Write the checkpoint, or reuse one a previous run completed (``.complete`` holds its description)."""
    from tiny_models import save_harmony_tokenizer

    marker = out / ".complete"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("layers") == layers:
            print(f"  reusing {out}", flush=True)
            return {**done["info"], "reused": True}
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    shards = [("embed", {"model.embed_tokens.weight": normal_bf16((VOCAB, HIDDEN), 0.02)})]
    shards += [(f"layer{i}", layer_tensors(i, mxfp4)) for i in range(layers)]
    shards.append(("head", {"model.norm.weight": normal_bf16((HIDDEN,), 0.1),
                            "lm_head.weight": normal_bf16((VOCAB, HIDDEN), HIDDEN ** -0.5)}))
    weight_map, total = {}, 0
    for n, (_, tensors) in enumerate(shards):
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(out / name, tensors)
        weight_map.update({k: name for k in tensors})
        print(f"  wrote {name} ({total / 2**30:.1f} GiB so far)", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    (out / "config.json").write_text(json.dumps(config(layers, mxfp4), indent=2))
    save_harmony_tokenizer(out)
    info = {"bytes": total, "seconds": round(time.monotonic() - started, 1)}
    marker.write_text(json.dumps({"layers": layers, "info": info}))
    return info


def build_adapter(out: Path, layers: int, r: int) -> dict:
    """PEFT's on-disk layout for LoRA on q/k/v/o (target_modules) and the experts (target_parameters:
    gate_up_proj wrapped first, so it sits at ``experts.base_layer``; down_proj at ``experts``)."""
    marker = out / ".complete"
    if marker.is_file() and json.loads(marker.read_text()).get("key") == [layers, r]:
        return json.loads(marker.read_text())["info"]
    out.mkdir(parents=True, exist_ok=True)
    t = {}
    for i in range(layers):
        p = f"base_model.model.model.layers.{i}."
        for proj, (o, n) in {"q_proj": (HEADS * HEAD_DIM, HIDDEN), "k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
                             "v_proj": (KV_HEADS * HEAD_DIM, HIDDEN), "o_proj": (HIDDEN, HEADS * HEAD_DIM)}.items():
            t[p + f"self_attn.{proj}.lora_A.weight"] = normal_bf16((r, n), n ** -0.5)
            t[p + f"self_attn.{proj}.lora_B.weight"] = normal_bf16((o, r), 0.002)
        t[p + "mlp.experts.base_layer.lora_A.weight"] = normal_bf16((r * EXPERTS, HIDDEN), HIDDEN ** -0.5)
        t[p + "mlp.experts.base_layer.lora_B.weight"] = normal_bf16((2 * FF, r * EXPERTS), 0.002)
        t[p + "mlp.experts.lora_A.weight"] = normal_bf16((r * EXPERTS, FF), FF ** -0.5)
        t[p + "mlp.experts.lora_B.weight"] = normal_bf16((HIDDEN, r * EXPERTS), 0.002)
    size = write_safetensors(out / "adapter_model.safetensors", t)
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
        "use_dora": False, "fan_in_fan_out": False, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"], "task_type": "CAUSAL_LM",
        "auto_mapping": {"base_model_class": "GptOssForCausalLM",
                         "parent_library": "transformers.models.gpt_oss.modeling_gpt_oss"},
    }, indent=2))
    marker.write_text(json.dumps({"key": [layers, r], "info": {"bytes": size}}))
    return {"bytes": size}


def run_convert(base: Path, adapter: Path | None, out: Path, out_type: str, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "convert.cli", "-b", str(base), "-o", str(out), "-t", out_type]
    if adapter:
        cmd += ["-a", str(adapter)]
    if threads:
        cmd += ["--threads", str(threads)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    log = proc.stdout.read() if proc.stdout else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"haruhi-convert failed ({code}):\n{log[-3000:]}")
    size = out.stat().st_size
    return {"type": out_type, "adapter": adapter is not None, "seconds": round(seconds, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "output_gib": round(size / 2**30, 2),
            "write_mib_per_s": round(size / 2**20 / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24, help="gpt-oss-20b has 24")
    ap.add_argument("--layout", choices=["mxfp4", "bf16", "both"], default="mxfp4",
                    help="how the base stores its experts")
    ap.add_argument("--types", default="mxfp4,q8_0", help="comma-separated --type values to convert to")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--no-adapter-too", action="store_true", help="also time a plain conversion without the adapter")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_convert"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints (a later run reuses them) and outputs")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = ap.parse_args()

    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "torch": torch.__version__, "layers": args.layers,
               "rank": args.rank, "runs": []}
    layouts = ["mxfp4", "bf16"] if args.layout == "both" else [args.layout]
    args.workdir.mkdir(parents=True, exist_ok=True)
    adapter = args.workdir / "adapter"
    print(f"building the LoRA adapter (r={args.rank}) in {adapter}", flush=True)
    results["adapter"] = build_adapter(adapter, args.layers, args.rank)
    for layout in layouts:
        base = args.workdir / f"gpt-oss-{layout}"
        print(f"building a random gpt-oss ({args.layers} layers, {layout} experts) in {base}", flush=True)
        results[f"checkpoint_{layout}"] = build_checkpoint(base, args.layers, layout == "mxfp4")
        for out_type in [t.strip() for t in args.types.split(",") if t.strip()]:
            for with_adapter in ([True, False] if args.no_adapter_too else [True]):
                out = args.workdir / f"out-{layout}-{out_type}{'' if with_adapter else '-base'}.gguf"
                print(f"haruhi-convert {layout} base -> {out_type}{' + LoRA' if with_adapter else ''} …", flush=True)
                run = run_convert(base, adapter if with_adapter else None, out, out_type, args.threads)
                run["base_layout"] = layout
                results["runs"].append(run)
                print("  " + json.dumps(run), flush=True)
                if not args.keep:
                    out.unlink()
        if not args.keep:
            shutil.rmtree(base)
    if not args.keep:
        shutil.rmtree(adapter)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
