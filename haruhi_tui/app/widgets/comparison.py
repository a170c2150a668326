"""The evaluation comparison as tables, drawn from the ``comparison.json`` that ``haruhi eval compare`` writes:
overall (each run, the difference of two, the reference walk-through), per character, and the notes."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def _delta(a: Any, b: Any) -> str:
    return f"{b - a:+.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "–"


def overall_table(data: dict[str, Any]) -> Table:
    names, refs = list(data["runs"]), list(data.get("reference") or {})
    table = Table(title="haruhi eval — overall")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    if len(names) == 2:
        table.add_column("Δ", justify="right")
    for ref in refs:
        table.add_column(f"ref {ref}", justify="right", style="dim")
    for row in data["overall"]:
        cells = [_fmt(row["runs"].get(n)) for n in names]
        if len(names) == 2:
            cells.append(_delta(row["runs"].get(names[0]), row["runs"].get(names[1])))
        cells += [_fmt((row.get("reference") or {}).get(r)) for r in refs]
        table.add_row(row["metric"], *cells)
    return table


def character_table(data: dict[str, Any]) -> Table:
    """Per character: samples, then each quality metric (the overall rows that characters have) for each run."""
    names = list(data["runs"])
    scored = [v for entry in data["per_character"] for v in entry["runs"].values() if v]
    metrics = [(row["metric"], row["key"]) for row in data["overall"] if any(row["key"] in v for v in scored)]
    table = Table(title="per character")
    table.add_column("character")
    table.add_column("n", justify="right")
    for label, _ in metrics:
        for name in names:
            table.add_column(f"{label}\n{name}", justify="right")
    for entry in data["per_character"]:
        runs = entry["runs"]
        samples = next((v.get("samples", 0) for v in runs.values() if v), 0)
        cells = [_fmt(runs[n].get(key)) if runs.get(n) else "–" for _, key in metrics for n in names]
        table.add_row(entry["character"], str(samples), *cells)
    return table


def comparison_view(data: dict[str, Any]) -> Group:
    parts: list[RenderableType] = [overall_table(data)]
    if data.get("per_character"):
        parts.append(character_table(data))
    parts += [Text.from_markup("[yellow]note:[/] ") + Text(note) for note in data.get("notes") or []]
    return Group(*parts)
