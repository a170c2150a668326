"""Chat with two GGUF models on the same lines, through the app's own ChatSession, and write a transcript.

Used for issue 9: the bundled Gemma 3 270M base against the LoRA fine-tune exported with haruhi-convert.
Greedy decoding so the transcript is reproducible.

    python benchmarks/chat_transcript.py --character haruhi --base BASE.gguf --tuned TUNED.gguf \
        --out benchmarks/results/gemma-loop/transcript.md 今天社团活动做什么？ 阿虚你又迟到了吗
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from haruhi_tui.core.characters import load_character  # noqa: E402
from haruhi_tui.core.engine import open_gguf  # noqa: E402
from haruhi_tui.core.paths import bundled_characters_dir  # noqa: E402
from haruhi_tui.services.chat import ChatSession, ChatSettings  # noqa: E402
from haruhi_tui.store.sessions import Store  # noqa: E402


def converse(model: Path, character, lines: list[str], store: Store) -> list[str]:
    engine = open_gguf(model, n_ctx=4096)
    settings = ChatSettings(temperature=0.0, max_tokens=80)
    session = ChatSession.start(store, character, model=str(model), settings=settings)
    return [session.send(engine, line).content for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lines", nargs="+", help="what the user says, one argument per turn")
    parser.add_argument("--character", default="haruhi")
    parser.add_argument("--characters", type=Path, default=bundled_characters_dir())
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--tuned", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    character = load_character(args.characters / args.character)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "sessions.db")
        base = converse(args.base, character, args.lines, store)
        tuned = converse(args.tuned, character, args.lines, store)
    user = character.interlocutor
    out = [f"# {character.name}: base vs fine-tuned", "",
           f"{datetime.date.today()} · {platform.machine()} CPU · greedy, max 80 tokens · "
           "through haruhi_tui.services.chat.ChatSession",
           f"base `{args.base.name}` · fine-tuned `{args.tuned.name}`", "",
           "| turn | " + user + " | base | fine-tuned |", "| --- | --- | --- | --- |"]
    for i, (line, b, t) in enumerate(zip(args.lines, base, tuned), 1):
        cell = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
        out.append(f"| {i} | {cell(line)} | {cell(b)} | {cell(t)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out) + "\n", encoding="utf-8")
    print("\n".join(out))


if __name__ == "__main__":
    main()
