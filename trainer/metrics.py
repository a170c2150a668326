"""BLEU-4 and ROUGE-1/2/L exactly as LLaMA-Factory's ``ComputeSimilarity`` computes them.

The reference numbers we compare with (fine-tuned gpt-oss-20b: BLEU-4 36.42, ROUGE-1 39.69, …) were made
by LLaMA-Factory, so every detail matters:

* ROUGE-1/2/L are F-scores from ``rouge_chinese`` over jieba words joined by spaces; 0 for all three when
  either side has no word after segmentation (whitespace only). ROUGE-N counts *distinct* n-grams
  (``rouge_chinese`` uses sets), ROUGE-L is the summary-level LCS over all words.
* BLEU-4 is nltk ``sentence_bleu`` over **characters** (``list(text)``), default weights (0.25 × 4),
  smoothing ``method3`` (NIST geometric: the k-th zero precision becomes 1 / (2^k · denominator)).
* Each score is ×100 and rounded to 4 decimals per sample; the reported value is the plain mean over samples.

What text is scored (final channel only, or LLaMA-Factory's raw decode) is decided by the caller; see
:func:`scoring_texts`.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Iterable, Literal, Mapping

from haruhi_tui.core import harmony

METRIC_KEYS: tuple[str, ...] = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")
ScoringMode = Literal["final", "lf-raw"]
SCORING_MODES: tuple[str, ...] = ("final", "lf-raw")

#: What LLaMA-Factory's gpt_oss template puts in front of every label (its empty "thought" plus the final
#: channel header), as text once ``skip_special_tokens=True`` removed the special tokens.
LF_HARMONY_LABEL_PREFIX = "analysis" + "assistant" + "final"

_jieba = None


def _cut(text: str) -> list[str]:
    global _jieba
    if _jieba is None:
        import jieba

        jieba.setLogLevel(logging.CRITICAL)
        jieba.initialize()
        _jieba = jieba
    return list(_jieba.cut(text))


def sample_scores(predict: str, label: str) -> dict[str, float]:
    """The four scores (×100, 4 decimals) of one prediction against its label."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    hypothesis, reference = _cut(predict), _cut(label)
    scores: dict[str, float] = {}
    if not " ".join(hypothesis).split() or not " ".join(reference).split():
        scores.update({"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0})
    else:
        result = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        for key in ("rouge-1", "rouge-2", "rouge-l"):
            scores[key] = round(result[key]["f"] * 100, 4)
    bleu = sentence_bleu([list(label)], list(predict), smoothing_function=SmoothingFunction().method3)
    scores["bleu-4"] = round(float(bleu) * 100, 4)
    return {key: scores[key] for key in METRIC_KEYS}


def mean_scores(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over samples (NaN-free: an empty input gives zeros)."""
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    n = 0
    for row in rows:
        n += 1
        for key in METRIC_KEYS:
            totals[key] += float(row[key])
    return {key: (totals[key] / n if n else 0.0) for key in METRIC_KEYS}


def per_group_scores(rows: Iterable[tuple[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean scores per group (character), with the group's sample count; groups sorted by name."""
    groups: dict[str, list[Mapping[str, float]]] = defaultdict(list)
    for name, scores in rows:
        groups[name].append(scores)
    return {name: {**mean_scores(groups[name]), "samples": len(groups[name])} for name in sorted(groups)}


def prefixed(scores: Mapping[str, float], prefix: str = "predict_") -> dict[str, float]:
    """``{"bleu-4": x}`` -> ``{"predict_bleu-4": x}``, LLaMA-Factory's key names."""
    return {f"{prefix}{key}": value for key, value in scores.items()}


def lf_label(reference: str, style: str) -> str:
    """The label as LLaMA-Factory decodes it for comparison: for gpt-oss its template adds an empty thought
    and the final-channel header before the answer, which survive ``skip_special_tokens`` as words."""
    return LF_HARMONY_LABEL_PREFIX + reference if style == "harmony" else reference


def scoring_texts(raw: str, reference: str, style: str, mode: ScoringMode, reply: str | None = None) -> tuple[str, str]:
    """(prediction, label) as they are scored.

    ``final``: the character's speech only: harmony analysis and special tokens removed from the output
    (``reply`` is the already parsed speech, when the caller has it), the label stripped.
    ``lf-raw``: what LLaMA-Factory compares: every special token removed from the whole output (channel
    names and the analysis stay in), and the label as its template encodes it (:func:`lf_label`).
    """
    if mode == "final":
        predict = reply if reply is not None else harmony.final_text(raw)
        return predict, harmony.final_text(reference)
    if mode == "lf-raw":
        return harmony.strip_special_tokens(raw), lf_label(reference, style)
    raise ValueError(f"scoring mode is one of {', '.join(SCORING_MODES)}, not {mode!r}")


def speech_of_lf_text(text: str) -> str:
    """The final-channel speech inside a LLaMA-Factory decode of a harmony output or label.

    With special tokens stripped, ``<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final
    <|message|>SPEECH`` reads ``analysis…assistantfinalSPEECH``: the speech is what follows the last
    ``assistantfinal``. Text without that marker is returned stripped, unchanged.
    """
    marker = "assistant" + "final"
    if marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text.strip()


def is_finite_scores(scores: Mapping[str, float]) -> bool:
    return all(isinstance(scores.get(k), (int, float)) and math.isfinite(scores[k]) for k in METRIC_KEYS)
