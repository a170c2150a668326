"""The evaluation metric must equal LLaMA-Factory's ComputeSimilarity: hand-checked values, and an
independent plain implementation of BLEU-4 (characters, NIST smoothing) and ROUGE (jieba words) on real labels."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from trainer.metrics import lf_label, mean_scores, per_group_scores, sample_scores, scoring_texts, speech_of_lf_text


def _cut_words(text: str) -> list[str]:
    """jieba words as rouge_chinese sees them: it splits the space-joined words into sentences after
    。！？ (and …… / ......), normalises each sentence's spaces and flattens them again, so a sentence that
    is only whitespace becomes one empty word (a quirk LLaMA-Factory's numbers include)."""
    import re

    import jieba

    joined = " ".join(jieba.cut(text))
    joined = re.sub("([。！？?])([^”’])", r"\1\n\2", joined)
    joined = re.sub("(\\.{6})([^”’])", r"\1\n\2", joined)
    joined = re.sub("(…{2})([^”’])", r"\1\n\2", joined)
    joined = re.sub("([。！？?][”’])([^，。！？?])", r"\1\n\2", joined)
    sentences = [" ".join(s.split()) for s in joined.rstrip().split("\n") if s]
    return [word for sentence in sentences for word in sentence.split(" ")]


def reference_bleu4(predict: str, label: str) -> float:
    """BLEU-4 written from the definition: clipped character n-gram precisions, the k-th zero precision
    replaced by 1/(2^k * denominator), geometric mean, brevity penalty; 0 if no unigram matches."""
    hyp, ref = list(predict), list(label)
    if not hyp:
        return 0.0
    precisions = []
    for n in range(1, 5):
        hyp_ngrams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        ref_ngrams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        matched = sum(min(c, ref_ngrams[g]) for g, c in hyp_ngrams.items())
        precisions.append((matched, max(1, sum(hyp_ngrams.values()))))
    if precisions[0][0] == 0:
        return 0.0
    k, logs = 1, []
    for matched, total in precisions:
        if matched == 0:
            logs.append(math.log(1 / (2 ** k * total)))
            k += 1
        else:
            logs.append(math.log(matched / total))
    bp = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return round(bp * math.exp(sum(logs) / 4) * 100, 4)


def reference_rouge(predict: str, label: str) -> dict[str, float]:
    """ROUGE-1/2 F over *distinct* word n-grams and ROUGE-L F over the word LCS (rouge_chinese's definitions)."""
    import jieba

    if not " ".join(jieba.cut(predict)).split() or not " ".join(jieba.cut(label)).split():
        return {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    hyp, ref = _cut_words(predict), _cut_words(label)
    if not hyp or not ref:
        return {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}

    def f(p: float, r: float) -> float:
        return round(2.0 * (p * r) / (p + r + 1e-8) * 100, 4)

    out = {}
    for n in (1, 2):
        h = {tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1)}
        r = {tuple(ref[i:i + n]) for i in range(len(ref) - n + 1)}
        overlap = len(h & r)
        out[f"rouge-{n}"] = f(overlap / len(h) if h else 0.0, overlap / len(r) if r else 0.0)
    table = [[0] * (len(hyp) + 1) for _ in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if ref[i - 1] == hyp[j - 1] else max(table[i - 1][j], table[i][j - 1])
    lcs = table[len(ref)][len(hyp)]
    out["rouge-l"] = f(lcs / len(hyp), lcs / len(ref))
    return out


@pytest.mark.parametrize("predict,label,expected", [
    # identical, long enough for 4-grams: everything is 100
    ("今天天气很好，我们去公园吧。", "今天天气很好，我们去公园吧。",
     {"bleu-4": 100.0, "rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0}),
    # two identical characters: no 3/4-grams -> NIST smoothing gives (1·1·½·¼)^¼ = 0.5946; one jieba word -> no bigrams
    ("你好", "你好", {"bleu-4": 59.4604, "rouge-1": 100.0, "rouge-2": 0.0, "rouge-l": 100.0}),
    # empty prediction: all zero (no words; no unigram match)
    ("", "你好，阿虚", {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}),
    # whitespace only counts as empty after segmentation
    ("   ", "你好", {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}),
    # pure punctuation is scored (jieba keeps it as words): nothing in common here
    ("！！！", "……", {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}),
    # English: words {hello, world} vs {hello, there, world}: P=1, R=2/3 -> F=0.8; no shared bigram
    ("hello world", "hello there world", {"bleu-4": 52.3708, "rouge-1": 80.0, "rouge-2": 0.0, "rouge-l": 80.0}),
])
def test_hand_checked_values(predict, label, expected):
    assert sample_scores(predict, label) == expected


def test_single_character_and_mixed_text():
    # "a" vs "a": p1 = 1, three zero precisions -> (1 · ½ · ¼ · ⅛)^¼ = 0.35355
    assert sample_scores("a", "a")["bleu-4"] == 35.3553
    mixed = sample_scores("我用Python写了3个bug！", "我用 Python 写了 3 个 bug。")
    assert mixed == {"bleu-4": reference_bleu4("我用Python写了3个bug！", "我用 Python 写了 3 个 bug。"),
                     **reference_rouge("我用Python写了3个bug！", "我用 Python 写了 3 个 bug。")}
    assert 0 < mixed["rouge-1"] < 100


def test_matches_independent_implementation_on_real_labels(small_val):
    labels = [s.target for s in small_val][:40]
    pairs = [(labels[i], labels[(i + 1) % len(labels)]) for i in range(len(labels))]
    pairs += [(label[: max(1, len(label) // 2)], label) for label in labels[:15]]  # partial overlap
    pairs += [(label + label[:5], label) for label in labels[:10]]  # longer than the reference
    for predict, label in pairs:
        ours = sample_scores(predict, label)
        expected = {"bleu-4": reference_bleu4(predict, label), **reference_rouge(predict, label)}
        for key, value in expected.items():
            assert ours[key] == pytest.approx(value, abs=1e-4), (key, predict, label)
    assert any(sample_scores(p, ref)["rouge-2"] > 0 for p, ref in pairs)


def test_means_and_groups():
    rows = [{"bleu-4": 10.0, "rouge-1": 20.0, "rouge-2": 0.0, "rouge-l": 5.0},
            {"bleu-4": 30.0, "rouge-1": 40.0, "rouge-2": 10.0, "rouge-l": 15.0}]
    assert mean_scores(rows) == {"bleu-4": 20.0, "rouge-1": 30.0, "rouge-2": 5.0, "rouge-l": 10.0}
    groups = per_group_scores([("春日", rows[0]), ("阿虚", rows[1]), ("春日", rows[1])])
    assert groups["春日"]["samples"] == 2 and groups["春日"]["bleu-4"] == 20.0
    assert groups["阿虚"]["rouge-l"] == 15.0
    assert mean_scores([]) == {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}


def test_scoring_modes_on_a_harmony_output():
    raw = ("<|channel|>analysis<|message|>She is annoyed.<|end|>"
           "<|start|>assistant<|channel|>final<|message|>笨蛋！<|return|>")
    assert scoring_texts(raw, "笨蛋！", "harmony", "final") == ("笨蛋！", "笨蛋！")
    predict, label = scoring_texts(raw, "笨蛋！", "harmony", "lf-raw")
    # LLaMA-Factory decodes with skip_special_tokens: channel words and analysis stay; its label carries the
    # empty thought + final header of its gpt_oss template
    assert predict == "analysisShe is annoyed.assistantfinal笨蛋！"
    assert label == "analysisassistantfinal笨蛋！" == lf_label("笨蛋！", "harmony")
    assert speech_of_lf_text(predict) == speech_of_lf_text(label) == "笨蛋！"
    # a reply cut off inside the analysis has no speech: scored as empty
    assert scoring_texts("<|channel|>analysis<|message|>Hmm, let me", "笨蛋！", "harmony", "final")[0] == ""
    assert lf_label("笨蛋！", "script") == "笨蛋！"
