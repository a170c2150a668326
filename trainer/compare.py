"""``haruhi eval compare``: runs side by side, overall and per character, next to the reference numbers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import read_json, write_json, write_text

from .evaluate import METRICS_FILE
from .metrics import METRIC_KEYS

#: The published walk-through we measure ourselves against: LLaMA-Factory LoRA fine-tune of gpt-oss-20b on
#: haruhi_train, predicted on haruhi_val (8 GPUs), scored by LLaMA-Factory (our ``lf-raw`` scoring mode).
REFERENCE_SOURCE = "LLaMA-Factory gpt-oss-20b walk-through (haruhi_val, LLaMA-Factory scoring = our lf-raw)"
REFERENCE: dict[str, dict[str, float]] = {
    "fine-tuned": {"predict_bleu-4": 36.42, "predict_rouge-1": 39.69, "predict_rouge-2": 21.90,
                   "predict_rouge-l": 36.03, "predict_samples_per_second": 3.4},
    "base": {"predict_bleu-4": 3.23, "predict_rouge-1": 11.06, "predict_rouge-2": 1.76,
             "predict_rouge-l": 4.43, "predict_samples_per_second": 1.1},
}
ROWS: tuple[tuple[str, str], ...] = (
    ("BLEU-4", "predict_bleu-4"),
    ("ROUGE-1", "predict_rouge-1"),
    ("ROUGE-2", "predict_rouge-2"),
    ("ROUGE-L", "predict_rouge-l"),
    ("samples/s", "predict_samples_per_second"),
)
LABELS = {"bleu-4": "BLEU-4", "rouge-1": "ROUGE-1", "rouge-2": "ROUGE-2", "rouge-l": "ROUGE-L"}
#: What the comparison keeps of each run's metrics, under "details".
DETAIL_KEYS = ("scoring", "decoding", "engine", "model", "adapter", "samples", "complete")


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    metrics_file = p / METRICS_FILE if p.is_dir() else p
    if not metrics_file.is_file():
        raise HaruhiError(f"no {METRICS_FILE} in {p}: run `haruhi eval --out {p}` (or `haruhi eval score`) first")
    metrics = read_json(metrics_file, "metrics")
    if not isinstance(metrics, dict) or "predict_bleu-4" not in metrics:
        raise HaruhiError(f"{metrics_file} is not a haruhi eval metrics file (no predict_bleu-4)")
    return _usable(metrics)


def _usable(metrics: dict[str, Any]) -> dict[str, Any]:
    """A metrics file as the comparison reads it: fields of another type (a hand edit, another tool) are
    dropped rather than raised on."""
    per = metrics.get("per_character")
    per = {str(name): entry for name, entry in per.items() if isinstance(entry, dict)} if isinstance(per, dict) else {}
    for entry in per.values():
        if not isinstance(entry.get("samples"), int):
            entry["samples"] = 0
    scalars = {k: v if v is None or isinstance(v, (str, int, float, bool)) else None
               for k, v in metrics.items() if k not in ("per_character", "decoding")}
    decoding = metrics.get("decoding") if isinstance(metrics.get("decoding"), dict) else {}
    return {**metrics, **scalars, "per_character": per, "decoding": decoding}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)



def _character_cells(entry: dict, names: list[str]) -> list[str]:
    """One per-character row: name, sample count, then each metric for each run ("–" where a run lacks it)."""
    samples = next((v["samples"] for v in entry["runs"].values() if v), 0)
    cells = [entry["character"], str(samples)]
    for k in METRIC_KEYS:
        for n in names:
            v = entry["runs"][n]
            cells.append(_fmt(v.get(f"predict_{k}")) if v else "–")
    return cells

def _delta(a: Any, b: Any) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return f"{b - a:+.2f}"
    return "–"


def comparison(runs: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> dict[str, Any]:
    """The comparison as data: overall rows, per-character rows, notes on what is not like for like."""
    if not runs:
        raise HaruhiError("pass at least one run folder (e.g. runs/base runs/ft)")
    names = list(names) if names else [Path(r).name or str(r) for r in runs]
    if len(names) != len(runs):
        raise HaruhiError(f"--name given {len(names)} times for {len(runs)} runs")
    loaded = [load_run(r) for r in runs]
    overall = []
    for label, key in ROWS:
        row = {"metric": label, "key": key, "runs": {n: m.get(key) for n, m in zip(names, loaded)},
               "reference": {k: REFERENCE[k].get(key) for k in REFERENCE}}
        overall.append(row)
    characters = sorted({c for m in loaded for c in (m.get("per_character") or {})})
    per_character = []
    for character in characters:
        entry = {"character": character, "runs": {}}
        for n, m in zip(names, loaded):
            entry["runs"][n] = (m.get("per_character") or {}).get(character)
        per_character.append(entry)
    notes = []
    scorings = {n: m.get("scoring", "?") for n, m in zip(names, loaded)}
    if len(set(scorings.values())) > 1:
        notes.append("runs were scored differently (" + ", ".join(f"{n}: {s}" for n, s in scorings.items())
                     + "): not like for like")
    if any(s != "lf-raw" for s in scorings.values()):
        notes.append("the reference numbers were scored by LLaMA-Factory (lf-raw: channel words and analysis left in); "
                     "runs scored on final-channel speech only are not directly comparable with them — "
                     "`haruhi eval --lf-raw` scores the LLaMA-Factory way")
    decodings = {n: (m.get("decoding") or {}).get("sampling") for n, m in zip(names, loaded)}
    if any(d == "greedy" for d in decodings.values()):
        notes.append("greedy decoding; the reference sampled with LLaMA-Factory's defaults "
                     "(temperature 0.95, top_p 0.7, top_k 50): use `--sampling lf` for a like-for-like run")
    for n, m in zip(names, loaded):
        if m.get("complete") is False:
            notes.append(f"{n} is incomplete ({m.get('samples')} of {m.get('total_samples')} samples)")
    if len({m.get("samples") for m in loaded}) > 1:
        notes.append("runs cover different numbers of samples: "
                     + ", ".join(f"{n}: {m.get('samples')}" for n, m in zip(names, loaded)))
    return {"runs": {n: str(r) for n, r in zip(names, runs)}, "overall": overall, "per_character": per_character,
            "reference_source": REFERENCE_SOURCE, "reference": REFERENCE, "notes": notes,
            "details": {n: {k: m.get(k) for k in DETAIL_KEYS} for n, m in zip(names, loaded)}}


def to_markdown(data: dict[str, Any]) -> str:
    names = list(data["runs"])
    ref_names = list(data["reference"])
    lines = ["# haruhi eval: comparison", ""]
    for n in names:
        d = data["details"][n]
        lines.append(f"- **{n}**: `{data['runs'][n]}` — {d.get('samples')} samples, scoring {d.get('scoring')}, "
                     f"decoding {(d.get('decoding') or {}).get('sampling', '?')}, engine {d.get('engine') or '?'}")
    lines += ["", "## Overall", ""]
    header = ["metric", *names]
    if len(names) == 2:
        header.append(f"Δ ({names[1]} − {names[0]})")
    header += [f"reference {r}" for r in ref_names]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in data["overall"]:
        values = [_fmt(row["runs"][n]) for n in names]
        if len(names) == 2:
            values.append(_delta(row["runs"][names[0]], row["runs"][names[1]]))
        values += [_fmt(row["reference"][r]) for r in ref_names]
        lines.append("| " + " | ".join([row["metric"], *values]) + " |")
    lines += ["", f"Reference: {data['reference_source']}.", ""]
    if data["per_character"]:
        lines += ["## Per character", ""]
        header = ["character", "samples"] + [f"{LABELS[k]} {n}" for k in METRIC_KEYS for n in names]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---", "---:"] + ["---:"] * (len(header) - 2)) + "|")
        for entry in data["per_character"]:
            lines.append("| " + " | ".join(_character_cells(entry, names)) + " |")
        lines.append("")
    if data["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in data["notes"]] + [""]
    return "\n".join(lines)


def print_comparison(data: dict[str, Any], console) -> None:
    from rich.table import Table

    names = list(data["runs"])
    ref_names = list(data["reference"])
    table = Table(title="haruhi eval — overall")
    table.add_column("metric")
    for n in names:
        table.add_column(n, justify="right")
    if len(names) == 2:
        table.add_column("Δ", justify="right")
    for r in ref_names:
        table.add_column(f"ref {r}", justify="right", style="dim")
    for row in data["overall"]:
        cells = [_fmt(row["runs"][n]) for n in names]
        if len(names) == 2:
            cells.append(_delta(row["runs"][names[0]], row["runs"][names[1]]))
        cells += [_fmt(row["reference"][r]) for r in ref_names]
        table.add_row(row["metric"], *cells)
    console.print(table)
    if data["per_character"]:
        chars = Table(title="per character")
        chars.add_column("character")
        chars.add_column("n", justify="right")
        for k in METRIC_KEYS:
            for n in names:
                chars.add_column(f"{LABELS[k]}\n{n}", justify="right")
        for entry in data["per_character"]:
            chars.add_row(*_character_cells(entry, names))
        console.print(chars)
    for note in data["notes"]:
        console.print(f"[yellow]note:[/] {note}")


def write_comparison(data: dict[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
    out_dir = Path(out)
    md, js = out_dir / "comparison.md", out_dir / "comparison.json"
    write_text(md, to_markdown(data))
    write_json(js, data)
    return md, js
