"""How fast the chat feels: tokens/s streamed to the screen and first-token latency on a follow-up turn.

Runs the real app (Textual pilot, headless, 80x24) with the bundled Gemma 3 270M on llama.cpp, picks a
character, and sends a few lines. For every reply it measures, on the UI side (when the text reaches the
message widget):

* streamed tokens/s: (generated tokens - 1) / (time of the last shown piece - time of the first);
* first-token latency: Enter pressed -> first piece shown (turn 1 evaluates the whole persona prompt;
  later turns reuse the persona prefix from llama.cpp's KV cache, which the engine's stats confirm).

A raw llama.cpp decode loop on the same model and thread count is measured first, for comparison.
Results are printed and written to benchmarks/results/chat.md (or --out).

    .venv/bin/python benchmarks/bench_chat.py                 # haruhi, 6 turns
    .venv/bin/python benchmarks/bench_chat.py --character weixiaobao --turns 8
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LINES = [
    "你好，今天SOS团有什么活动？",
    "那我们要去哪里找外星人？",
    "我觉得你想太多了。",
    "好吧好吧，那我该做什么？",
    "阿虚今天又被你拖来了。",
    "你为什么总是这么有精神？",
    "明天还要继续吗？",
    "最后一个问题：你到底在找什么？",
]


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}){mem}, {platform.system()} {platform.release()}"


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def raw_decode(engine, tokens: int = 128) -> float:
    """llama.cpp's own speed: greedy decode of ``tokens`` tokens after a short prompt, no UI, no parsing
    (with the engine's thread count)."""
    llama = engine.llama
    prompt = llama.tokenize("凉宫春日说：".encode(), add_bos=True)
    llama.reset()
    start, n = 0.0, 0
    for token in llama.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
        n += 1
        if n == 1:
            start = time.perf_counter()
        if n > tokens:
            break
    return tokens / (time.perf_counter() - start)


async def drive_app(args, engine) -> list[dict]:
    from haruhi_tui.app.app import HaruhiApp
    from haruhi_tui.app.screens.pick import CharacterPicker
    from haruhi_tui.app.widgets import PromptInput
    from haruhi_tui.core.engine import Sampling

    async def wait(pilot, predicate, timeout=300.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the app did not get there in time")
            await pilot.pause(0.1)  # polling costs CPU that llama.cpp would otherwise get

    sampling = Sampling(temperature=args.temperature, max_tokens=args.max_tokens, repeat_penalty=1.1, seed=0)
    home = tempfile.mkdtemp(prefix="bench_chat_")
    os.environ["HARUHI_HOME"] = home
    app = HaruhiApp(characters_dir=args.characters, db_path=Path(home) / "s.db", engine=engine, sampling=sampling,
                    n_ctx=args.n_ctx)
    rows = []
    async with app.run_test(size=(80, 24)) as pilot:
        await wait(pilot, lambda: isinstance(app.screen, CharacterPicker))
        await pilot.press(*args.character)
        await pilot.press("enter")
        await wait(pilot, lambda: app.chat_screen.session is not None and app.screen is app.chat_screen)
        screen = app.chat_screen
        for turn, line in enumerate(LINES[: args.turns], start=1):
            box = screen.query_one(PromptInput)
            box.value = line
            before = screen.turns_done
            await pilot.press("enter")
            await wait(pilot, lambda: screen.turns_done > before)
            view = screen.views()[-1]
            stats = engine.last_stats
            streamed = view.last_shown_at - view.first_shown_at
            rows.append({
                "turn": turn,
                "prompt_tokens": stats.prompt_tokens,
                "reused_tokens": stats.reused_tokens,
                "generated_tokens": stats.generated_tokens,
                "pieces_shown": view.deltas_shown,
                "first_token_s": view.first_shown_at - screen.submitted_at if view.first_shown_at else float("nan"),
                "streamed_tok_s": ((stats.generated_tokens - 1) / streamed
                                   if streamed > 0 and stats.generated_tokens > 1 else float("nan")),
                "engine_tok_s": stats.tokens_per_second,
                "reply": view.content,
            })
            print(f"turn {turn}: {rows[-1]['first_token_s']:.3f} s to first token, "
                  f"{rows[-1]['streamed_tok_s']:.1f} tok/s on screen, {stats.reused_tokens}/{stats.prompt_tokens} "
                  f"prompt tokens from cache, {stats.generated_tokens} generated", flush=True)
        await pilot.press("ctrl+q")
    return rows


def main() -> None:
    from haruhi_tui.core.engine import default_threads, interactive_threads, open_gguf
    from haruhi_tui.core.paths import bundled_characters_dir
    from haruhi_tui.services.bundled_model import default_gguf

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--characters", type=Path, default=bundled_characters_dir())
    p.add_argument("--character", default="haruhi")
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None,
                   help="decode threads (default: what the app uses, haruhi_tui.core.engine.interactive_threads())")
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: the bundled Gemma 3 270M)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "chat.md")
    args = p.parse_args()

    import llama_cpp
    import textual

    load_before = load()
    model = args.model or default_gguf()
    threads = args.threads or interactive_threads()
    engine = open_gguf(model, n_ctx=args.n_ctx, n_threads=threads)
    raw = statistics.median(raw_decode(engine) for _ in range(3))
    all_cores = default_threads()
    if all_cores != threads:
        full = open_gguf(model, n_ctx=512, n_threads=all_cores)
        raw_all = statistics.median(raw_decode(full) for _ in range(3))
        full.close()
    else:
        raw_all = raw
    print(f"raw llama.cpp decode: {raw:.1f} tok/s with {threads} thread(s), {raw_all:.1f} with {all_cores}", flush=True)
    rows = asyncio.run(drive_app(args, engine))
    load_after = load()

    follow = [r for r in rows[1:] if r["generated_tokens"] > 1]
    streamed = sum(r["generated_tokens"] - 1 for r in rows if r["generated_tokens"] > 1) / sum(
        (r["generated_tokens"] - 1) / r["streamed_tok_s"]
        for r in rows if r["generated_tokens"] > 1 and r["streamed_tok_s"] > 0)
    first_follow = statistics.median(r["first_token_s"] for r in follow) if follow else float("nan")
    worst_follow = max((r["first_token_s"] for r in follow), default=float("nan"))
    reuse = statistics.median(r["reused_tokens"] / r["prompt_tokens"] for r in rows[1:]) if len(rows) > 1 else 0.0
    summary = (
        f"tokens/s streamed to the screen (all turns, token-weighted): **{streamed:.1f}** (target >= 40; raw llama.cpp "
        f"decode, no app: {raw:.1f} with {threads} thread(s), {raw_all:.1f} with all {all_cores} cores)\n"
        f"first-token latency on follow-up turns: median **{first_follow:.3f} s**, worst {worst_follow:.3f} s "
        f"(target <= 1 s); turn 1 (cold persona prompt): {rows[0]['first_token_s']:.3f} s\n"
        f"persona prefix reused from the KV cache on follow-ups: median {reuse:.0%} of the prompt tokens"
    )
    print(summary)
    table = ["| turn | prompt tok | from cache | generated | first token (s) | on-screen tok/s | engine tok/s "
             "| reply |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        reply = r["reply"].replace("|", "\\|")[:40]
        table.append(f"| {r['turn']} | {r['prompt_tokens']} | {r['reused_tokens']} | {r['generated_tokens']} | "
                     f"{r['first_token_s']:.3f} | {r['streamed_tok_s']:.1f} | {r['engine_tok_s']:.1f} | {reply} |")
    command = "python benchmarks/bench_chat.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        "# Chat speed (benchmarks/bench_chat.py)",
        "",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- load average before / after: {load_before} / {load_after} (other work on the machine slows every number)",
        f"- command: `{command.strip()}`",
        f"- versions: Python {platform.python_version()}, llama-cpp-python {llama_cpp.__version__}, "
        f"textual {textual.__version__}",
        f"- model: {engine.name} ({model.name}), {engine.style} style, n_ctx {engine.n_ctx}, "
        f"character {args.character}, "
        f"greedy={args.temperature == 0}, max_tokens {args.max_tokens}, decode threads {threads} (prompt: all cores)",
        "",
        *[f"{line}  " for line in summary.splitlines()],
        "",
        *table,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
