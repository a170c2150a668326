"""The chat's decode speed without the app: ``Engine.stream`` on the bundled Gemma 3 270M after a prompt as
long as a chat turn's, against a bare ``Llama.generate`` loop on the same prompt, so the share the app loses
(benchmarks/bench_chat.py) can be told from what the engine, the sampling and the context cost.

    python benchmarks/bench_chat_engine.py                 # thread count measured (as the app)
    python benchmarks/bench_chat_engine.py --threads 2     # fixed
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="decode threads (default: measured, as the app)")
    p.add_argument("--context", type=int, default=850, help="prompt tokens (a chat turn's context)")
    p.add_argument("--tokens", type=int, default=96, help="tokens decoded per run")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()

    from bench_chat import context_tokens, raw_decode

    from haruhi_tui.core.engine import Sampling, open_gguf
    from haruhi_tui.services.bundled_model import bundled_gguf_path

    engine = open_gguf(bundled_gguf_path(), n_ctx=4096, n_threads=args.threads)
    llama = engine.llama
    tokens = context_tokens(llama, args.context)
    prompt = llama.detokenize(tokens[1:]).decode("utf-8", "ignore")

    def streamed(penalty: float) -> float:
        times: list[float] = []
        sampling = Sampling(temperature=0, max_tokens=args.tokens, repeat_penalty=penalty)
        for _ in engine.stream(prompt, sampling, on_token=lambda _t: times.append(time.perf_counter())):
            pass
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else float("nan")

    threads = args.threads or f"measured ({'/'.join(map(str, engine.threads.counts))})"
    print(f"{len(tokens)}-token prompt, {args.tokens} tokens, threads {threads}")
    for penalty in (1.0, 1.1):
        for _ in range(args.repeat):
            raw = raw_decode(engine, args.tokens, args.context, penalty)
            print(f"repeat penalty {penalty}: raw Llama.generate {raw:.1f} tok/s, "
                  f"Engine.stream {streamed(penalty):.1f} tok/s")
    engine.close()


if __name__ == "__main__":
    main()
