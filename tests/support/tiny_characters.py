"""A small ChatHaruhi-style characters folder written on the fly (fast builds for tests of the writer)."""

from __future__ import annotations

from pathlib import Path

ROLE_PROMPT = "你正在扮演小明，一个爱讲冷笑话的高中生。请保持角色，不要说你是语言模型。"


def make_characters(root: Path, scenes: int = 12) -> Path:
    """One character (小明, folder ``xiaoming``) with ``scenes`` short scenes that share no line."""
    folder = root / "xiaoming"
    (folder / "texts").mkdir(parents=True)
    (folder / "system_prompt.txt").write_text(ROLE_PROMPT, encoding="utf-8")
    for i in range(scenes):
        (folder / "texts" / f"scene_{i:02d}.txt").write_text(
            f"小红:「第{i}天，你今天又想讲什么笑话？」\n"
            f"小明:「第{i}个笑话：为什么数学书总是很忧郁？因为它有太多问题。」\n"
            f"小红:「哈哈，第{i}次听还是好笑。」\n"
            f"小明:「那我明天第{i + 1}次再讲一个更冷的给你听。」\n",
            encoding="utf-8")
    return root
