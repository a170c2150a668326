"""A tiny ShareGPT training set: one short scene repeated, which a tiny model learns in a few steps."""

from __future__ import annotations

import json
from pathlib import Path

PERSONA = "你是凉宫春日,SOS团的团长。"
EXCHANGES = [("阿虚:「今天的社团活动做什么?」", "当然是寻找外星人、未来人和超能力者!"),
             ("阿虚:「你又在打什么主意?」", "SOS团要举办一场大冒险,你必须参加!")]


def write_dataset(path: Path, copies: int = 8) -> Path:
    """One short ShareGPT scene, repeated: a tiny model trains on it in a few steps."""
    messages = [{"from": "system", "value": PERSONA}]
    for user, reply in EXCHANGES:
        messages += [{"from": "user", "value": user}, {"from": "assistant", "value": reply}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"conversations": messages, "character": "春日"}] * copies, ensure_ascii=False),
                    encoding="utf-8")
    return path
