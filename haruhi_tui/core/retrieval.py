"""Offline scene retrieval: BM25 over jieba words (Chinese) and lower-cased words (English).

ChatHaruhi puts a few classic scenes relevant to the conversation into the prompt; this is the index
that picks them, shared by the dataset builder and the chat so both see the same kind of context.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from functools import lru_cache
from typing import Iterable, Iterator, Sequence

import jieba
import numpy as np

jieba.setLogLevel(logging.WARNING)

_WORD = re.compile(r"[\w\u4e00-\u9fff]+", re.UNICODE)
_STOP = frozenset(
    "的 了 是 我 你 他 她 它 们 在 有 和 就 不 也 都 这 那 啊 吗 呢 吧 a an the to of and is are i you he she it in on"
    " that this was be for with as at".split()
)


@lru_cache(maxsize=65536)
def _cut(text: str) -> tuple[str, ...]:
    return tuple(jieba.lcut(text, HMM=False))


def tokenize(text: str) -> list[str]:
    """Words for retrieval: jieba segmentation, lower-cased, punctuation and stop words dropped."""
    words: list[str] = []
    for chunk in _WORD.findall(text):
        if chunk.isascii():
            word = chunk.lower()
            if word not in _STOP:
                words.append(word)
            continue
        words.extend(w.lower() for w in _cut(chunk) if w.strip() and w.lower() not in _STOP)
    return words


class BM25Index:
    """A small Okapi BM25 index over documents given as texts (one per scene).

    Each word's per-document weight is computed once, so a query costs one numpy add per word.
    """

    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        doc_terms = [Counter(tokenize(doc)) for doc in documents]
        lengths = np.array([sum(t.values()) for t in doc_terms], dtype=np.float64)
        avg = float(lengths.mean()) if len(lengths) else 0.0
        self.size = len(doc_terms)
        postings: dict[str, list[tuple[int, int]]] = {}
        for i, terms in enumerate(doc_terms):
            for term, tf in terms.items():
                postings.setdefault(term, []).append((i, tf))
        self._postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, rows in postings.items():
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            tf = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
            idf = math.log(1 + (self.size - len(rows) + 0.5) / (len(rows) + 0.5))
            norm = k1 * (1 - b + b * lengths[ids] / (avg or 1.0))
            self._postings[term] = (ids, idf * tf * (k1 + 1) / (tf + norm))

    def __len__(self) -> int:
        return self.size

    def scores(self, query: str) -> dict[int, float]:
        """BM25 score of each document that shares at least one word with ``query``."""
        total = self._score_array(query)
        hit = np.flatnonzero(total > 0)
        return {int(i): float(total[i]) for i in hit}

    def _score_array(self, query: str) -> np.ndarray:
        total = np.zeros(self.size, dtype=np.float64)
        for term in sorted(set(tokenize(query))):  # a fixed order: float sums must not depend on hash seeds
            posting = self._postings.get(term)
            if posting is not None:
                total[posting[0]] += posting[1]
        return total

    def rank(self, query: str, exclude: Iterable[int] = ()) -> Iterator[int]:
        """Document indices, best first; ties and documents with no shared word follow in index order."""
        total = self._score_array(query)
        order = np.lexsort((np.arange(self.size), -total))  # score descending, then index
        excluded = set(exclude)
        return (int(i) for i in order if int(i) not in excluded)
