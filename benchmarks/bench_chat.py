"""How fast the chat feels on a small CPU: tokens/s streamed to the screen against raw llama.cpp decode, and
first-token latency on follow-up turns, with the scenes each turn got.

Runs the real app (Textual pilot, headless, 80x24) with the bundled Gemma 3 270M on llama.cpp, picks a
character, and types a few lines as a person would (``--typing-cps`` characters a second, then Enter at
once; 0 pastes the line), so the app can evaluate the prompt while the line is typed. For every reply it
measures, on the UI side (when the text reaches the message widget):

* streamed tokens/s: (generated tokens - 1) / (time of the last shown piece - time of the first), i.e. from
  the first token on screen to the last (the first piece is shown at once, the rest at most 4 times a
  second, the last when the reply ends);
* first-token latency: Enter -> first piece shown;
* what the UI thread spent while the reply streamed (CPU time of the app's thread: every millisecond of it
  is taken from llama.cpp's threads, which decode on every core), and what other programs used;
* the scenes the prompt got, their BM25 relevance to the line, and whether the set is the one the plain
  sticky rule picks for the line (what the app chose before prompts were evaluated while typing).

Every reply is ``--reply-tokens`` tokens long (the engine's ``min_tokens`` = ``max_tokens``): the bundled
base Gemma ends its replies after ~8 tokens, which measures the ramp-up of a reply, not streaming.

Raw llama.cpp decode (a bare greedy ``Llama.generate`` loop, repeat penalty 1.0, no app) is measured the
same way as the app's replies: over as many tokens, from the first token to the last; after a 7-token
prompt (the issue's first baseline) and after a prompt as long as the turn's own, so that each decoded token
attends to as many keys as the reply's did: the like-for-like figure, which the streaming target is judged
by (the gap between the two is llama.cpp's attention over the context, the same without the app). Both are
measured with every core after every turn, in the same process while the app waits for the next line: the
machine is shared, and its speed drifts by 10-20 % within minutes. Raw decode before and after the app, with
every core and with half of them, and after a ``--context``-token prompt, is shown too; ``--repeat`` runs it
all again.

    python benchmarks/bench_chat.py --turns 6                 # haruhi, results in benchmarks/results/chat.md
    python benchmarks/bench_chat.py --turns 8 --repeat 3 --typing-cps 0
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
STREAM_TARGET = 0.90  # streamed tokens/s as a share of raw llama.cpp decode with every core
FIRST_TOKEN_TARGET = 1.0  # seconds, worst follow-up turn
#: Seconds between the benchmark's own looks at the app (its CPU samples, its waits): every wake-up of the
#: app's thread is taken from llama.cpp's, so the benchmark looks rarely.
POLL = 0.2


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


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by the whole machine and by this process (Linux; zeros elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        busy = sum(int(x) for i, x in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
        mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return busy / os.sysconf("SC_CLK_TCK"), (int(mine[11]) + int(mine[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


#: Prompt tokens of the raw decode measured "at a chat's context" (with 96-token replies the six turns here
#: have 830-1,290 prompt tokens, median ~1,110).
CHAT_CONTEXT = 1100


def context_tokens(llama, context: int) -> list[int]:
    """A prompt of ``context`` tokens made of the benchmark's lines (BOS first)."""
    return llama.tokenize(("".join(LINES) * 40).encode(), add_bos=True)[:context]


def raw_decode(engine, tokens: int = 96, context: int = 0, repeat_penalty: float = 1.0) -> float:
    """llama.cpp's own speed: greedy decode of ``tokens`` tokens after a short prompt (or one of ``context``
    tokens: each decoded token then attends to as many keys as in a chat turn), no UI, no parsing (with the
    thread count the engine's llama.cpp context has); tokens/s from the first token to the last."""
    llama = engine.llama
    if context:
        prompt = context_tokens(llama, context)
    else:
        prompt = llama.tokenize("凉宫春日说：".encode(), add_bos=True)
    start, n = 0.0, 0  # Llama.generate keeps what the cache holds of the prompt: only decoding is timed
    for _ in llama.generate(prompt, temp=0.0, repeat_penalty=repeat_penalty, reset=True):
        n += 1
        if n == 1:
            start = time.perf_counter()
        if n == tokens:
            break
    return (tokens - 1) / (time.perf_counter() - start)


def raw_prompt(engine, tokens: int = 512) -> float:
    """llama.cpp's prompt evaluation speed: one batch of ``tokens`` tokens, tokens/s."""
    llama = engine.llama
    text = "".join(LINES) * 40
    prompt = llama.tokenize(text.encode(), add_bos=True)[:tokens]
    llama.reset()
    start = time.perf_counter()
    llama.eval(prompt)
    return len(prompt) / (time.perf_counter() - start)


class TurnBaseline:
    """Raw decode with every core, measured between two turns of the app (in the same process, seconds from
    the reply it is compared with, so that the machine is the same): after the short prompt, and after a
    prompt as long as the turn's (each decoded token attends to as many keys as the reply's did), each on an
    engine of its own that keeps its prompt cached."""

    def __init__(self, model: Path, threads: int, tokens: int, n_ctx: int) -> None:
        from haruhi_tui.core.engine import open_gguf

        self.tokens = tokens
        self.short = open_gguf(model, n_ctx=tokens + 64, n_threads=threads)
        self.long = open_gguf(model, n_ctx=n_ctx, n_threads=threads)

    def measure(self, context: int) -> tuple[float, float]:
        from haruhi_tui.core import openmp

        try:
            return raw_decode(self.short, self.tokens), raw_decode(self.long, self.tokens, context)
        finally:
            openmp.release_threads()

    def close(self) -> None:
        self.short.close()
        self.long.close()


def raw_speeds(model: Path, counts: tuple[int, ...], tokens: int, context: int,
               repeats: int = 2) -> tuple[dict[int, float], float, float]:
    """Raw decode tokens/s of ``tokens`` tokens per fixed thread count (median of ``repeats``), and with the
    most threads: prompt evaluation tokens/s and decode tokens/s after a prompt of ``context`` tokens."""
    from haruhi_tui.core import openmp
    from haruhi_tui.core.engine import open_gguf

    speeds, prompt, at_context = {}, 0.0, 0.0
    for count in counts:
        engine = open_gguf(model, n_ctx=context + tokens + 64, n_threads=count)
        try:
            speeds[count] = statistics.median(raw_decode(engine, tokens) for _ in range(repeats))
            if count == max(counts):
                prompt = statistics.median(raw_prompt(engine) for _ in range(repeats))
                at_context = statistics.median(raw_decode(engine, tokens, context) for _ in range(repeats))
        finally:
            engine.close()
            openmp.release_threads()  # this thread's OpenMP pool would slow the app's (see core.openmp)
    return speeds, prompt, at_context


async def drive_app(args, engine, baseline: TurnBaseline) -> list[dict]:
    from textual import events

    from haruhi_tui.app.app import HaruhiApp
    from haruhi_tui.app.screens.pick import CharacterPicker
    from haruhi_tui.app.widgets import PromptInput
    from haruhi_tui.core.engine import Sampling

    async def wait(predicate, timeout=600.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the app did not get there in time")
            await asyncio.sleep(POLL)  # plain sleeps: the pilot's pause walks the whole screen every time

    ui_samples: list[tuple[float, float, float, float]] = []

    async def sample_ui_thread():  # (wall, CPU time of this thread, which is the app's; machine's; process's)
        while True:
            ui_samples.append((time.perf_counter(), time.thread_time(), *cpu_seconds()))
            await asyncio.sleep(POLL)

    def cpu_shares(start: float, end: float) -> tuple[float, float]:
        """Between the first and the last sample in [start, end], in cores: the UI thread's CPU time, and
        what other programs on the machine used (the machine's CPU time less this process's)."""
        inside = [s for s in ui_samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan"), float("nan")
        (w0, ui0, all0, me0), (w1, ui1, all1, me1) = inside[0], inside[-1]
        return (ui1 - ui0) / (w1 - w0), max(0.0, (all1 - all0) - (me1 - me0)) / (w1 - w0)

    sampling = Sampling(temperature=args.temperature, max_tokens=args.reply_tokens or args.max_tokens,
                        min_tokens=args.reply_tokens, repeat_penalty=1.1, seed=0)
    home = tempfile.mkdtemp(prefix="bench_chat_")
    os.environ["HARUHI_HOME"] = home
    app = HaruhiApp(characters_dir=args.characters, db_path=Path(home) / "s.db", engine=engine, sampling=sampling,
                    n_ctx=args.n_ctx)
    rows = []
    async with app.run_test(size=(80, 24)) as pilot:
        await wait(lambda: isinstance(app.screen, CharacterPicker))
        await pilot.press(*args.character)
        await pilot.press("enter")
        await wait(lambda: app.chat_screen.session is not None and app.screen is app.chat_screen)
        screen = app.chat_screen
        session = screen.session
        builder = session.builder(engine)
        place = {scene.scene_id: i for i, scene in enumerate(session.character.scenes)}
        sampler = asyncio.create_task(sample_ui_thread())
        previous: list[str] = []
        for turn, line in enumerate(LINES[: args.turns], start=1):
            box = screen.query_one(PromptInput)
            before = screen.turns_done
            typing_started = time.perf_counter()
            if args.typing_cps > 0:
                for ch in line:
                    app.post_message(events.Key(ch, ch))
                    await asyncio.sleep(1 / args.typing_cps)
            else:
                box.value = line
            await wait(lambda: box.value == line, timeout=30)
            typed = time.perf_counter() - typing_started
            enter_at = time.perf_counter()
            app.post_message(events.Key("enter", None))
            await wait(lambda: screen.turns_done > before)
            # what the reply's worker does after it (settling moved scenes) must not overlap raw decode below
            await wait(lambda: not any(w.group == "generate" and not w.is_finished for w in app.workers))
            view = screen.views()[-1]
            stats = engine.last_stats
            streamed = view.last_shown_at - view.first_shown_at
            chosen = list(session.chat.scene_ids)
            plain = [s.scene_id for s in builder.select_scenes(line, sticky_ids=previous)]
            scores = builder.index.scores(line)
            previous = chosen
            ui_share, others = cpu_shares(view.first_shown_at, view.last_shown_at)
            rate = ((stats.generated_tokens - 1) / streamed
                    if streamed > 0 and stats.generated_tokens > 1 else float("nan"))
            rows.append({
                "turn": turn,
                "typed_s": typed,
                "prompt_tokens": stats.prompt_tokens,
                "reused_tokens": stats.reused_tokens,
                "generated_tokens": stats.generated_tokens,
                "threads": stats.threads,
                "pieces_shown": view.deltas_shown,
                "first_token_s": view.first_shown_at - enter_at if view.first_shown_at else float("nan"),
                "engine_first_token_s": stats.first_token_seconds,
                "streamed_tok_s": rate,
                "engine_tok_s": stats.tokens_per_second,
                "ui_cpu_share": ui_share,
                "others_cpu": others,
                "ui_ms_per_token": 1000 * ui_share / rate,
                "scenes": chosen,
                "relevance": sum(scores.get(place[s], 0.0) for s in chosen),
                "plain_rule_same_set": sorted(plain) == sorted(chosen),
                "reply": view.content,
            })
            r = rows[-1]
            r["raw_short"], r["raw_context"] = baseline.measure(stats.prompt_tokens)  # the app waits for a line
            print(f"turn {turn}: typed in {typed:.1f} s, {r['first_token_s']:.3f} s to first token, "
                  f"{r['streamed_tok_s']:.1f} tok/s on screen ({stats.threads} thread(s)), UI thread "
                  f"{100 * r['ui_cpu_share']:.1f}% of a core while streaming (other programs "
                  f"{100 * r['others_cpu']:.0f}%), {stats.reused_tokens}/"
                  f"{stats.prompt_tokens} prompt tokens from cache, {stats.generated_tokens} generated; raw decode "
                  f"now {r['raw_short']:.1f} / {r['raw_context']:.1f} tok/s (short prompt / this turn's prompt)",
                  flush=True)
        sampler.cancel()
        await pilot.press("ctrl+q")
    return rows


def summarize(rows: list[dict]) -> dict:
    counted = [r for r in rows if r["generated_tokens"] > 1 and r["streamed_tok_s"] > 0]
    streamed = sum(r["generated_tokens"] - 1 for r in counted) / sum(
        (r["generated_tokens"] - 1) / r["streamed_tok_s"] for r in counted)
    follow = [r for r in rows[1:] if r["generated_tokens"] > 0]
    raw_short = statistics.median(r["raw_short"] for r in rows)
    # raw decode at each counted turn's context, over as many tokens as the app streamed there
    raw_context = sum(r["generated_tokens"] - 1 for r in counted) / sum(
        (r["generated_tokens"] - 1) / r["raw_context"] for r in counted)
    return {
        "streamed": streamed,
        "raw_short": raw_short,
        "raw_context": raw_context,
        "share": streamed / raw_short,
        "share_context": streamed / raw_context,
        "first_median": statistics.median(r["first_token_s"] for r in follow) if follow else float("nan"),
        "first_worst": max((r["first_token_s"] for r in follow), default=float("nan")),
        "ui_share": statistics.median(r["ui_cpu_share"] for r in counted) if counted else float("nan"),
        "ui_ms": statistics.median(r["ui_ms_per_token"] for r in counted) if counted else float("nan"),
        "others": max((r["others_cpu"] for r in counted), default=float("nan")),
    }


def report(run: int, rows: list[dict], threads: int, loads: tuple[str, str]) -> tuple[str, dict]:
    s = summarize(rows)
    ok = "met" if s["share_context"] >= STREAM_TARGET else "NOT met"
    ok_first = "met" if s["first_worst"] <= FIRST_TOKEN_TARGET else "NOT met"
    prompts = statistics.median(r["prompt_tokens"] for r in rows)
    lines = [
        f"### Run {run} (load average before / after: {loads[0]} / {loads[1]})",
        "",
        f"- streamed to the screen: **{s['streamed']:.1f} tokens/s = {s['share_context']:.0%} of raw llama.cpp "
        f"decode with all {threads} cores at the same context** ({s['raw_context']:.1f} tokens/s after prompts as "
        f"long as the turns', measured between the turns; target >= {STREAM_TARGET:.0%}: {ok}); "
        f"{s['share']:.0%} of raw decode after a 7-token prompt ({s['raw_short']:.1f} tokens/s, median; the "
        f"turns' prompts: median {prompts:.0f} tokens)",
        f"- first token on follow-up turns: median {s['first_median']:.3f} s, **worst {s['first_worst']:.3f} s** "
        f"(target <= {FIRST_TOKEN_TARGET:.0f} s: {ok_first}); turn 1 (cold persona prompt): "
        f"{rows[0]['first_token_s']:.3f} s",
        f"- UI thread while a reply streams: {s['ui_share']:.1%} of a core, {s['ui_ms']:.2f} ms a token (median); "
        f"other programs on the machine: up to {s['others']:.0%} of a core (\"others %\", per turn)",
        "",
        "| turn | typed (s) | prompt tok | from cache | left at Enter | generated | threads | first token (s) "
        "| of it, the engine's (s) | on-screen tok/s | engine tok/s | raw tok/s (short prompt / this turn's) "
        "| UI % | others % "
        "| scenes (relevance; plain rule's set?) | reply |",
        "|" + " ---: |" * 14 + " --- | --- |",
    ]
    for r in rows:
        scenes = ", ".join(x.split("/")[-1].removesuffix(".txt").replace("Haruhi_", "") for x in r["scenes"])
        same = "same" if r["plain_rule_same_set"] else "DIFFERENT"
        reply = r["reply"].replace("|", "\\|")[:24]
        lines.append(f"| {r['turn']} | {r['typed_s']:.1f} | {r['prompt_tokens']} | {r['reused_tokens']} | "
                     f"{r['prompt_tokens'] - r['reused_tokens']} | "
                     f"{r['generated_tokens']} | {r['threads']} | {r['first_token_s']:.3f} | "
                     f"{r.get('engine_first_token_s', float('nan')):.3f} | "
                     f"{r['streamed_tok_s']:.1f} | {r['engine_tok_s']:.1f} | "
                     f"{r['raw_short']:.1f} / {r['raw_context']:.1f} | {100 * r['ui_cpu_share']:.1f} | "
                     f"{100 * r['others_cpu']:.0f} | {scenes} ({r['relevance']:.1f}; {same}) | {reply} |")
    return "\n".join(lines), s


def kept_sections(path: Path) -> str:
    """The hand-written ``## `` sections of an earlier results file (notes, other machines): a new run keeps
    them below its own numbers."""
    try:
        old = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith("## ")), None)
    return "".join(lines[start:]) if start is not None else ""


def main() -> None:
    from haruhi_tui.core.decode_threads import candidate_counts
    from haruhi_tui.core.engine import default_threads, open_gguf
    from haruhi_tui.core.paths import bundled_characters_dir
    from haruhi_tui.services.bundled_model import default_gguf

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--characters", type=Path, default=bundled_characters_dir())
    p.add_argument("--character", default="haruhi")
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--reply-tokens", type=int, default=96,
                   help="every reply is this long (default 96); 0: replies end where the model ends them")
    p.add_argument("--max-tokens", type=int, default=128, help="the longest reply with --reply-tokens 0")
    p.add_argument("--context", type=int, default=CHAT_CONTEXT,
                   help=f"prompt tokens of the raw decode at a chat turn's context (default {CHAT_CONTEXT})")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None,
                   help="decode threads for the app (default: what the app does, measured while decoding)")
    p.add_argument("--typing-cps", type=float, default=3.0,
                   help="characters typed a second (default 3, a quick pinyin typist); 0 pastes each line")
    p.add_argument("--repeat", type=int, default=1, help="run raw decode and the app this many times")
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: the bundled Gemma 3 270M)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "chat.md")
    args = p.parse_args()

    import llama_cpp
    import textual

    model = args.model or default_gguf()
    counts = candidate_counts(default_threads())
    sections, summaries = [], []
    engine = None
    for run in range(1, args.repeat + 1):
        load_before = load()
        tokens = args.reply_tokens or args.max_tokens
        speeds, prompt_before, context_before = raw_speeds(model, counts, tokens, args.context)
        raw = {c: [v] for c, v in speeds.items()}
        print("raw llama.cpp decode: " + ", ".join(f"{v[0]:.1f} tok/s with {c} thread(s)" for c, v in raw.items())
              + f"; prompt evaluation {prompt_before:.0f} tok/s", flush=True)
        engine = open_gguf(model, n_ctx=args.n_ctx, n_threads=args.threads)
        baseline = TurnBaseline(model, max(counts), tokens, args.n_ctx)
        try:
            rows = asyncio.run(drive_app(args, engine, baseline))
        finally:
            baseline.close()
        chooser = engine.threads
        engine.close()
        speeds, prompt_after, context_after = raw_speeds(model, counts, tokens, args.context)
        for c, v in speeds.items():
            raw[c].append(v)
        text, s = report(run, rows, max(counts), (load_before, load()))
        raw_text = ", ".join(f"{' / '.join(f'{x:.1f}' for x in v)} with {c} thread(s)"
                             for c, v in sorted(raw.items(), reverse=True))
        text += (f"\n\nraw llama.cpp decode before / after the app, after a 7-token prompt: {raw_text}; after a "
                 f"{args.context}-token prompt with all cores: {context_before:.1f} / {context_after:.1f} tokens/s")
        text += (f"\n\nraw prompt evaluation with all cores, before / after the app: {prompt_before:.0f} / "
                 f"{prompt_after:.0f} tokens/s (what a turn left to evaluate at Enter costs: see the table)")
        text += (f"\n\nthe app's thread count: {'fixed' if chooser.fixed else 'measured'}, ended at {chooser.current}; "
                 f"{chooser.probes} tries of another count, {chooser.switches} switch(es)")
        print(text, flush=True)
        sections.append(text)
        summaries.append(s)

    shares = [s["share"] for s in summaries]
    context_shares = [s["share_context"] for s in summaries]
    worst = [s["first_worst"] for s in summaries]
    command = "python benchmarks/bench_chat.py " + " ".join(sys.argv[1:])
    replies = (f"every reply {args.reply_tokens} tokens (min_tokens = max_tokens)" if args.reply_tokens
               else f"replies as the model ends them, max_tokens {args.max_tokens}")
    typing = f"typed at {args.typing_cps:g} characters/s, Enter at once" if args.typing_cps > 0 else "pasted"
    text = "\n".join([
        "# Chat speed (benchmarks/bench_chat.py)",
        "",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- command: `{command.strip()}`",
        f"- versions: Python {platform.python_version()}, llama-cpp-python {llama_cpp.__version__}, "
        f"textual {textual.__version__}",
        f"- model: {engine.name} ({model.name}), {engine.style} style, n_ctx {engine.n_ctx}, "
        f"character {args.character}, greedy={args.temperature == 0}, repeat penalty 1.1, "
        f"{replies}, lines {typing}, "
        f"decode threads {args.threads or 'measured (' + ' or '.join(map(str, counts)) + ')'}",
        "",
        f"**Streamed / raw decode with every core at the same context: "
        f"{', '.join(f'{x:.0%}' for x in context_shares)}** (target >= {STREAM_TARGET:.0%}); against raw decode "
        f"after a 7-token prompt: {', '.join(f'{x:.0%}' for x in shares)}; "
        f"**worst first token on follow-ups: {', '.join(f'{x:.2f} s' for x in worst)}** "
        f"(target <= {FIRST_TOKEN_TARGET:.0f} s). Other work on the machine slows every number: see the load "
        "averages.",
        "",
        *[section + "\n" for section in sections],
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept = kept_sections(args.out)
    args.out.write_text(text + ("\n" + kept if kept else ""), encoding="utf-8")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
