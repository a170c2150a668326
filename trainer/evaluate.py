"""``haruhi eval``: predict every validation reply, score it, write LLaMA-Factory-compatible outputs.

Outputs in ``--out``:

* ``generated_predictions.jsonl`` — one JSON object per line, appended (and flushed) as each prediction
  finishes: LLaMA-Factory's ``prompt``/``predict``/``label`` plus ``index``, ``id`` (prompt hash),
  ``character``, ``raw`` (the model output, special tokens kept), ``reply`` (the parsed speech),
  ``reference`` (the dataset's line), ``tokens``, ``finish`` (``stop``/``length``), ``scores``, and
  ``session``/``elapsed`` (which run produced it and when, so runtime survives resumes).
* ``metrics.json`` — LLaMA-Factory's ``predict_*`` keys, ``per_character``, and how it was made
  (``scoring``, ``decoding``, engine, model, ``complete``).
* ``run.json`` — the settings that decide the predictions (checked on resume); ``events.jsonl`` — progress
  for the TUI launcher (:mod:`haruhi_tui.core.events`).

An interrupted run (Ctrl-C, kill, crash) keeps every finished prediction; the same command continues
with the samples not yet predicted (matched by index and prompt hash). Ctrl-C also writes ``metrics.json``
for what was done, marked ``"complete": false``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from haruhi_tui.core.errors import Cancelled, HaruhiError
from haruhi_tui.core.events import EventLog
from haruhi_tui.core.fsutil import parse_json, read_json, write_json
from haruhi_tui.core.prompt_format import conversation_from_messages, reply_text
from haruhi_tui.core.sharegpt import Sample, resolve_dataset

from .generation.decoding import DecodingOptions, Request
from .metrics import (
    METRIC_KEYS,
    ScoringMode,
    mean_scores,
    per_group_scores,
    prefixed,
    sample_scores,
    scoring_texts,
    speech_of_lf_text,
)

PREDICTIONS_FILE = "generated_predictions.jsonl"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
#: Settings that change what is predicted: a resumed run must match them.
PREDICTION_SETTINGS = ("model", "adapter", "dataset", "decoding", "scoring")
UNKNOWN_CHARACTER = "unknown"


@dataclass
class EvalConfig:
    model: str
    dataset: str
    out: Path
    adapter: str | None = None
    scoring: ScoringMode = "final"
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    limit: int | None = None
    sample: int | None = None
    seed: int = 42
    batch_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    restart: bool = False

    def settings(self) -> dict[str, Any]:
        return {
            "model": str(Path(self.model).resolve()) if Path(self.model).exists() else self.model,
            "adapter": str(Path(self.adapter).resolve()) if self.adapter else None,
            "dataset": str(Path(self.dataset).resolve()) if Path(self.dataset).exists() else self.dataset,
            "decoding": self.decoding.describe(),
            "scoring": self.scoring,
            "limit": self.limit,
            "sample": self.sample,
            "seed": self.seed,
        }


# -- choosing samples -------------------------------------------------------------------------

def character_of(sample: Sample) -> str:
    return sample.character or UNKNOWN_CHARACTER


def stratified_indices(samples: Sequence[Sample], n: int, seed: int) -> list[int]:
    """``n`` sample indices spread over characters in proportion to their size (largest remainder; every
    character gets one while ``n`` allows), chosen at random within a character, fixed by ``seed``."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        groups[character_of(sample)].append(i)
    if n >= len(samples):
        return list(range(len(samples)))
    names = sorted(groups)
    quota = {name: 0 for name in names}
    if n >= len(names):
        for name in names:
            quota[name] = 1
    remaining = n - sum(quota.values())
    if remaining > 0:
        spare = {name: len(groups[name]) - quota[name] for name in names}
        total_spare = sum(spare.values())
        shares = {name: remaining * spare[name] / total_spare for name in names}
        for name in names:
            quota[name] += int(shares[name])
        left = n - sum(quota.values())
        by_remainder = sorted(names, key=lambda name: (-(shares[name] - int(shares[name])), name))
        for name in by_remainder:
            if left <= 0:
                break
            if quota[name] < len(groups[name]):
                quota[name] += 1
                left -= 1
    elif remaining < 0:  # fewer slots than characters: one each for a seeded choice of characters
        chosen = set(random.Random(f"{seed}:characters").sample(names, n))
        quota = {name: int(name in chosen) for name in names}
    picked: list[int] = []
    for name in names:
        members = groups[name]
        picked.extend(random.Random(f"{seed}:{name}").sample(members, min(quota[name], len(members))))
    return sorted(picked)


def select(samples: Sequence[Sample], *, limit: int | None, sample: int | None, seed: int) -> list[int]:
    indices = stratified_indices(samples, sample, seed) if sample else list(range(len(samples)))
    return indices[:limit] if limit else indices


def load_references(spec: str) -> list[Sample]:
    """The dataset to evaluate; every sample must end with the reply to predict (the reference)."""
    samples = resolve_dataset(spec, require_target=False)
    for i, s in enumerate(samples):
        if not s.messages or s.messages[-1]["role"] != "assistant" or not s.messages[-1]["content"].strip():
            raise HaruhiError(
                f"{spec}, sample {i}: no reference reply (the last turn must be the character's line to predict); "
                "evaluate on haruhi_val.json from `haruhi data build`")
    return samples


def prompt_hash(prompt: str) -> str:
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


# -- the predictions file ------------------------------------------------------------------------

def read_predictions(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a predictions file. A torn last line (a run killed mid-write) is dropped, and with
    ``repair`` cut from the file so appending continues cleanly.

    Lines end at ``\n`` only: JSON writers (ours, LLaMA-Factory's) leave U+2028, U+2029 and U+0085 unescaped
    inside strings, and :meth:`str.splitlines` would break a record there."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        data = data[:cut]
        if repair:
            with path.open("r+b") as fh:
                fh.truncate(cut)
    records = []
    for n, line in enumerate(data.decode("utf-8", "replace").split("\n"), 1):
        if not line.strip():
            continue
        record = parse_json(line, f"{path}, line {n} (fix or remove the line)")
        if not isinstance(record, dict):
            raise HaruhiError(f"{path}, line {n}: expected a JSON object")
        records.append(record)
    return records


def usable_scores(scores: Any) -> bool:
    """A record's ``scores`` hold every metric as a finite number."""
    return isinstance(scores, dict) and all(
        isinstance(scores.get(k), (int, float)) and not isinstance(scores.get(k), bool)
        and math.isfinite(scores[k]) for k in METRIC_KEYS)


def character_name(record: dict[str, Any]) -> str:
    """The record's character as a name (a file from elsewhere may hold anything there)."""
    name = record.get("character")
    return name if isinstance(name, str) and name else UNKNOWN_CHARACTER


def runtime_of(records: Iterable[dict[str, Any]]) -> float | None:
    """Seconds spent predicting, summed over sessions (each record says when in its session it finished)."""
    sessions: dict[Any, float] = {}
    for r in records:
        if isinstance(r.get("elapsed"), (int, float)) and math.isfinite(r["elapsed"]):
            key = r["session"] if isinstance(r.get("session"), int) else 0
            sessions[key] = max(sessions.get(key, 0.0), float(r["elapsed"]))
    return sum(sessions.values()) if sessions else None


def build_metrics(records: Sequence[dict[str, Any]], *, runtime: float | None, steps: int | None,
                  preparation: float | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics.json: LLaMA-Factory's flat ``predict_*`` keys first, then per character and provenance."""
    scores = [r["scores"] for r in records]
    metrics: dict[str, Any] = prefixed({k: round(v, 4) for k, v in mean_scores(scores).items()})
    n = len(records)
    metrics["predict_runtime"] = round(runtime, 4) if runtime is not None else None
    metrics["predict_samples_per_second"] = round(n / runtime, 3) if runtime else None
    metrics["predict_steps_per_second"] = round(steps / runtime, 3) if runtime and steps is not None else None
    metrics["predict_model_preparation_time"] = round(preparation, 4) if preparation is not None else None
    metrics["samples"] = n
    per_character = per_group_scores((character_name(r), r["scores"]) for r in records)
    metrics["per_character"] = {
        name: {**prefixed({k: round(v[k], 4) for k in METRIC_KEYS}), "samples": v["samples"]}
        for name, v in per_character.items()
    }
    if extra:
        metrics.update(extra)
    return metrics


# -- running ---------------------------------------------------------------------------------------

@dataclass
class EvalResult:
    metrics: dict[str, Any]
    predictions: Path
    metrics_path: Path
    predicted: int        # this session
    total: int
    complete: bool


ProgressCallback = Callable[[int, int, float], None]  # done, total, samples/s


class Evaluation:
    """One ``haruhi eval`` run: resume bookkeeping, generation, scoring, outputs, events."""

    def __init__(self, config: EvalConfig, *, generator=None, generator_factory=None,
                 on_progress: ProgressCallback | None = None, on_status: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.out = Path(config.out)
        self.predictions_path = self.out / PREDICTIONS_FILE
        self.metrics_path = self.out / METRICS_FILE
        self.generator = generator
        self.generator_factory = generator_factory
        self.on_progress = on_progress or (lambda done, total, rate: None)
        self.on_status = on_status or (lambda message: None)

    # settings and resume -------------------------------------------------------------------------

    def _check_run_file(self) -> None:
        run_path = self.out / RUN_FILE
        settings = self.config.settings()
        if run_path.is_file() and self.predictions_path.is_file() and not self.config.restart:
            previous = read_json(run_path, "run settings")
            if not isinstance(previous, dict):
                raise HaruhiError(f"{run_path} is damaged (not a JSON object): pass --restart to predict again")
            changed = [k for k in PREDICTION_SETTINGS if previous.get(k) != settings.get(k)]
            if changed:
                raise HaruhiError(
                    f"{self.out} holds predictions made with other settings ({', '.join(changed)} changed): "
                    "pass a new --out, or --restart to predict again from scratch")
        write_json(run_path, settings)

    def run(self) -> EvalResult:
        config = self.config
        samples = load_references(config.dataset)
        chosen = select(samples, limit=config.limit, sample=config.sample, seed=config.seed)
        if not chosen:
            raise HaruhiError("nothing to evaluate: --limit/--sample selected no samples")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HaruhiError(f"cannot create output folder {self.out}: {exc.strerror}") from exc
        if config.restart:
            for name in (PREDICTIONS_FILE, METRICS_FILE):
                (self.out / name).unlink(missing_ok=True)
        self._check_run_file()

        already = {r.get("index") for r in read_predictions(self.predictions_path, repair=True)} & set(chosen)
        events = EventLog(self.out, "eval")
        events.start({**config.settings(), "out": str(self.out)}, total=len(chosen), unit="sample",
                     resumed_from=len(already) or None)
        self._predicted = 0
        outputs = {"predictions": str(self.predictions_path)}
        try:
            return self._run(events, samples, chosen)
        except Cancelled:
            raise
        except KeyboardInterrupt:
            events.end("cancelled", outputs=outputs)
            raise Cancelled("interrupted before any prediction was finished; run the same command again to "
                            "continue") from None
        except HaruhiError as exc:
            events.error(str(exc))
            events.end("failed", outputs=outputs)
            raise
        except Exception as exc:
            detail = str(exc).splitlines()[0] if str(exc) else ""
            events.error(f"evaluation failed after {self._predicted} predictions: {type(exc).__name__}: {detail}",
                         kind=type(exc).__name__)
            events.end("failed", outputs=outputs)
            raise

    def _run(self, events: EventLog, samples: list[Sample], chosen: list[int]) -> EvalResult:
        config = self.config
        self.on_status("loading model")
        loaded = time.perf_counter()
        generator = self.generator or self.generator_factory()
        preparation = time.perf_counter() - loaded
        style = generator.style
        described = json.dumps(generator.describe(), ensure_ascii=False)
        events.emit("log", level="info", message=f"model ready in {preparation:.1f}s: {described}")

        self.on_status("building prompts")
        prompts: dict[int, tuple[str, list[int]]] = {}
        for i in chosen:
            conv = conversation_from_messages(samples[i].messages[:-1], character_of(samples[i]))
            prompts[i] = generator.encode(conv)

        existing = read_predictions(self.predictions_path, repair=True)
        wanted = {i: prompt_hash(prompts[i][0]) for i in chosen}
        done: dict[int, dict[str, Any]] = {}
        for record in existing:
            i = record.get("index")
            if i in wanted:
                if record.get("id") != wanted[i]:
                    raise HaruhiError(
                        f"{self.predictions_path}: sample {i} was predicted from a different prompt (the dataset or "
                        "the model's prompt style changed): pass a new --out, or --restart")
                if usable_scores(record.get("scores")):  # a record damaged on disk is predicted again
                    done[i] = record
        sessions = [r.get("session", 0) for r in existing if isinstance(r.get("session"), int)]
        session = (max(sessions) + 1) if sessions else 0
        todo = [i for i in chosen if i not in done]

        if done:
            self.on_status(f"resuming: {len(done)} of {len(chosen)} already predicted")
            events.emit("log", level="info", message=f"resuming: {len(done)} of {len(chosen)} already predicted")
            events.emit("progress", done=len(done), total=len(chosen), rate=0.0, unit="sample", elapsed=0.0, eta=None)
        requests = [Request(i, tuple(prompts[i][1])) for i in todo]
        records = dict(done)
        started = time.perf_counter()
        last_event = 0.0
        predicted = 0
        status = "completed"
        try:
            with self.predictions_path.open("a", encoding="utf-8") as fh:
                for completion in generator.generate(requests, config.decoding):
                    i = completion.index
                    sample = samples[i]
                    reply = reply_text(completion.raw, style)
                    predict, label = scoring_texts(completion.raw, sample.target, style, config.scoring,
                                                   reply=reply if config.scoring == "final" else None)
                    elapsed = time.perf_counter() - started
                    record = {
                        "prompt": prompts[i][0],
                        "predict": predict,
                        "label": label,
                        "index": i,
                        "id": wanted[i],
                        "character": character_of(sample),
                        "style": style,
                        "raw": completion.raw,
                        "reply": reply,
                        "reference": sample.target,
                        "tokens": completion.tokens,
                        "finish": completion.finish,
                        "scores": sample_scores(predict, label),
                        "session": session,
                        "elapsed": round(elapsed, 3),
                    }
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    fh.flush()
                    records[i] = record
                    predicted += 1
                    self._predicted = predicted
                    rate = predicted / max(elapsed, 1e-9)
                    self.on_progress(len(records), len(chosen), rate)
                    now = time.perf_counter()
                    if now - last_event >= 1.0 or len(records) == len(chosen):
                        last_event = now
                        eta = (len(chosen) - len(records)) / rate if rate > 0 else None
                        events.emit("progress", done=len(records), total=len(chosen), rate=round(rate, 3),
                                    unit="sample", elapsed=round(elapsed, 1),
                                    eta=round(eta, 1) if eta is not None else None)
        except KeyboardInterrupt:
            status = "cancelled"
        summary = getattr(generator, "summary", None)
        how_it_ran = summary() if callable(summary) else None
        if how_it_ran:
            events.emit("log", level="info", message=how_it_ran)

        ordered = [records[i] for i in chosen if i in records]
        complete = len(ordered) == len(chosen)
        steps = _steps(len(ordered), generator)
        metrics = build_metrics(
            ordered, runtime=runtime_of(ordered), steps=steps, preparation=preparation,
            extra={
                "complete": complete,
                "total_samples": len(chosen),
                "scoring": config.scoring,
                "decoding": config.decoding.describe(),
                **{k: v for k, v in generator.describe().items()},
                "dataset": config.dataset,
                "finished_by_length": sum(1 for r in ordered if r.get("finish") == "length"),
            })
        write_json(self.metrics_path, metrics)
        outputs = {"predictions": str(self.predictions_path), "metrics": str(self.metrics_path)}
        events.end(status, metrics={k: v for k, v in metrics.items() if k.startswith("predict_")}, outputs=outputs)
        if status == "cancelled":
            raise Cancelled(f"interrupted: {len(ordered)} of {len(chosen)} predictions kept in {self.predictions_path} "
                            f"(partial metrics in {self.metrics_path}); run the same command again to continue")
        return EvalResult(metrics, self.predictions_path, self.metrics_path, predicted, len(chosen), complete)


def _steps(n: int, generator) -> int:
    """Generation steps as LLaMA-Factory counts them: batches of the engine's batch size."""
    per_step = getattr(generator, "batch_size", None) or getattr(generator, "parallel", None) or 1
    return math.ceil(n / per_step)


# -- re-scoring a predictions file ---------------------------------------------------------------

def score_file(path: str | os.PathLike, out: str | os.PathLike, *, mode: ScoringMode | None = None) -> dict[str, Any]:
    """Recompute metrics.json from a predictions file alone (ours, or LLaMA-Factory's prompt/predict/label).

    ``mode=None`` scores ``predict``/``label`` as written. ``final`` re-derives the speech: from ``raw``
    where the file has it (ours), else from LLaMA-Factory's text by cutting what precedes the last
    ``assistantfinal`` (its decode of the harmony headers). ``lf-raw`` needs our ``raw`` and ``reference``.
    """
    src = Path(path)
    if src.is_dir():
        src = src / PREDICTIONS_FILE
    if not src.is_file():
        raise HaruhiError(f"predictions file not found: {src}")
    records = read_predictions(src)
    if not records:
        raise HaruhiError(f"{src} holds no predictions")
    rescored = []
    for n, record in enumerate(records, 1):
        if not isinstance(record.get("predict"), str) or not isinstance(record.get("label"), str):
            raise HaruhiError(f"{src}, line {n}: needs 'predict' and 'label' strings (LLaMA-Factory's "
                              "generated_predictions.jsonl format)")
        predict, label = record["predict"], record["label"]
        style = record.get("style") or ("harmony" if "<|start|>" in str(record.get("prompt", "")) else "chat")
        if mode == "final":
            if isinstance(record.get("raw"), str) and isinstance(record.get("reference"), str):
                predict, label = scoring_texts(record["raw"], record["reference"], style, "final",
                                               reply=record.get("reply") if style != "harmony" else None)
            else:
                predict, label = speech_of_lf_text(predict), speech_of_lf_text(label)
        elif mode == "lf-raw":
            if not (isinstance(record.get("raw"), str) and isinstance(record.get("reference"), str)):
                raise HaruhiError(f"{src}, line {n}: --mode lf-raw needs our 'raw' and 'reference' fields; "
                                  "LLaMA-Factory files are already lf-raw (omit --mode)")
            predict, label = scoring_texts(record["raw"], record["reference"], style, "lf-raw")
        rescored.append({**record, "predict": predict, "label": label, "scores": sample_scores(predict, label),
                         "character": character_name(record)})
    metrics = build_metrics(rescored, runtime=runtime_of(rescored), steps=None, preparation=None, extra={
        "complete": True,
        "scoring": mode or "as-written",
        "source": str(src),
    })
    out_dir = Path(out)
    write_json(out_dir / METRICS_FILE, metrics)
    return metrics
