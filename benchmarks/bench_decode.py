"""Chat speed on a GPU: llama.cpp decode tokens/s and time to first token for a persona prompt.

The chat turns go through the same code the TUI runs (haruhi_tui.services.chat.ChatSession on an Engine from
haruhi_tui.core.engine.open_gguf), without the screen: a SQLite session, the character's persona prompt with its
retrieved scenes, harmony rendering, streaming and parsing. For every turn it records the prompt size, how
much of it came from llama.cpp's KV cache, the time to the first generated token and the decode rate.
Turn 1 is cold (the whole persona prompt is evaluated); later turns are warm (the persona prefix is reused).
Two baselines, for comparison: llama-cpp-python's own decode loop (``Llama.generate``, no session, no
parsing: "raw"), and llama.cpp's time inside ``llama_decode`` during the turns (``llama_perf_context``:
generated tokens / decode time, the ceiling of any loop around llama.cpp, "llama_decode").

Targets of issue 9 (gpt-oss-20b on one H100): decode >= 150 tokens/s, warm first token <= 150 ms.

    python benchmarks/bench_decode.py --model /tmp/gpt-oss-20b-mxfp4.gguf --characters DIR --out $OUT/decode
    python benchmarks/bench_decode.py --n-gpu-layers 0 --turns 2 --out /tmp/decode   # CPU, bundled Gemma

Writes OUT.json and OUT.md (date, machine, command, versions, one row per turn).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_chat import LINES, machine, raw_decode  # noqa: E402  (same lines and raw loop as the CPU chat bench)


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def run_turns(engine, args) -> list[dict]:
    from haruhi_tui.core.characters import load_character
    from haruhi_tui.core.engine import Sampling
    from haruhi_tui.services.chat import ChatSession
    from haruhi_tui.store.sessions import Store

    character = load_character(Path(args.characters) / args.character)
    sampling = Sampling(temperature=0.0, max_tokens=args.max_tokens, repeat_penalty=1.0, seed=0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as home:
        store = Store(Path(home) / "sessions.db")
        session = ChatSession.start(store, character, model=str(args.model))
        for turn, line in enumerate(LINES[: args.turns], start=1):
            started = time.perf_counter()
            session.send(engine, line, sampling=sampling)
            wall = time.perf_counter() - started
            s = engine.last_stats
            rows.append({
                "turn": turn, "prompt_tokens": s.prompt_tokens, "reused_tokens": s.reused_tokens,
                "evaluated_tokens": s.evaluated_tokens, "generated_tokens": s.generated_tokens,
                "first_token_ms": round(1000 * s.first_token_seconds, 1),
                "prompt_tok_s": round(s.evaluated_tokens / s.prompt_seconds, 1) if s.prompt_seconds else None,
                "decode_tok_s": round(s.tokens_per_second, 1), "wall_s": round(wall, 3), "stop": s.stop_reason,
            })
            print(json.dumps(rows[-1]), flush=True)
        store.close()
    return rows


def main() -> None:
    from haruhi_tui.core.engine import default_threads, open_gguf
    from haruhi_tui.core.paths import bundled_characters_dir
    from haruhi_tui.services.bundled_model import default_gguf

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: the bundled Gemma 3 270M)")
    p.add_argument("--characters", type=Path, default=bundled_characters_dir())
    p.add_argument("--character", default="haruhi")
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=256, help="tokens per reply (random weights never stop early)")
    p.add_argument("--n-ctx", type=int, default=8192)
    p.add_argument("--n-batch", type=int, default=512, help="prompt batch (the app's default is 512)")
    p.add_argument("--n-gpu-layers", type=int, default=-1, help="-1: all layers on the GPU; 0: CPU only")
    p.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto",
                   help="llama.cpp flash attention (auto: what the app uses, on)")
    p.add_argument("--verbose", action="store_true", help="llama.cpp's own log on stderr")
    p.add_argument("--out", type=Path, required=True, help="report path without suffix: writes OUT.json and OUT.md")
    args = p.parse_args()

    import llama_cpp

    model = args.model or default_gguf()
    args.model = model
    loaded = time.perf_counter()
    engine = open_gguf(model, n_ctx=args.n_ctx, n_batch=args.n_batch, n_gpu_layers=args.n_gpu_layers,
                       flash_attn={"auto": None, "on": True, "off": False}[args.flash_attn], verbose=args.verbose)
    load_s = time.perf_counter() - loaded
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    raw = [raw_decode(engine, args.max_tokens) for _ in range(3)]
    print(f"loaded in {load_s:.1f} s (GPU offload {'on' if offload and args.n_gpu_layers else 'off'}); "
          f"raw decode {statistics.median(raw):.1f} tok/s", flush=True)
    ctx = engine.llama._ctx.ctx
    llama_cpp.llama_perf_context_reset(ctx)
    rows = run_turns(engine, args)
    perf = llama_cpp.llama_perf_context(ctx)  # time inside llama_decode for the turns' single-token steps
    warm = [r for r in rows[1:] if r["generated_tokens"] > 0]
    decode_rates = [r["decode_tok_s"] for r in rows if r["generated_tokens"] > 1]
    summary = {
        "raw_decode_tok_s": round(statistics.median(raw), 1),
        "llama_decode_tok_s": round(1000 * perf.n_eval / perf.t_eval_ms, 1) if perf.t_eval_ms else None,
        "session_decode_tok_s_median": round(statistics.median(decode_rates), 1) if decode_rates else None,
        "cold_first_token_ms": rows[0]["first_token_ms"] if rows else None,
        "cold_prompt_tokens": rows[0]["prompt_tokens"] if rows else None,
        "warm_first_token_ms_median": round(statistics.median(r["first_token_ms"] for r in warm), 1) if warm else None,
        "warm_first_token_ms_worst": max((r["first_token_ms"] for r in warm), default=None),
        "warm_reused_share_median": round(statistics.median(r["reused_tokens"] / r["prompt_tokens"] for r in warm), 3)
        if warm else None,
        "load_seconds": round(load_s, 1),
    }
    record = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": ", ".join(x for x in (gpu_name(), machine()) if x),
        "command": "python benchmarks/bench_decode.py " + " ".join(sys.argv[1:]),
        "versions": {"python": platform.python_version(), "llama_cpp_python": llama_cpp.__version__},
        "model": {"file": model.name, "architecture": engine.info.architecture, "style": engine.style,
                  "n_ctx": engine.n_ctx, "n_batch": args.n_batch, "flash_attn": args.flash_attn,
                  "n_gpu_layers": args.n_gpu_layers,
                  "gpu_offload_supported": offload, "threads": default_threads()},
        "character": args.character, "max_tokens": args.max_tokens, "summary": summary, "turns": rows,
    }
    engine.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    cols = ["turn", "prompt_tokens", "reused_tokens", "generated_tokens", "first_token_ms", "prompt_tok_s",
            "decode_tok_s", "stop"]
    lines = [f"# Chat decode benchmark, {record['date']}", "", f"- machine: {record['machine']}",
             f"- command: `{record['command']}`",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
             "- model: " + ", ".join(f"{k} {v}" for k, v in record["model"].items()), "",
             *[f"- {k}: {v}" for k, v in summary.items()], "",
             "| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps(summary))
    print(f"report: {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
