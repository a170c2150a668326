"""What a generator is asked for and what it gives back, the same for every engine.

The evaluator builds :class:`Request`\\ s (prompt ids, an index to find the sample again), picks
:class:`DecodingOptions` (recorded in metrics.json and checked on resume), and receives one
:class:`Completion` per request, in the order they finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Sampling = Literal["greedy", "lf"]
SAMPLINGS: tuple[str, ...] = ("greedy", "lf")

#: LLaMA-Factory's generation defaults (its GeneratingArguments): what its predict run sampled with.
LF_SAMPLING = {"temperature": 0.95, "top_p": 0.7, "top_k": 50, "max_new_tokens": 1024}


@dataclass(frozen=True)
class DecodingOptions:
    """How to pick tokens. ``greedy`` is reproducible; ``lf`` samples like LLaMA-Factory's defaults."""

    sampling: Sampling = "greedy"
    max_new_tokens: int = 1024
    temperature: float = LF_SAMPLING["temperature"]
    top_p: float = LF_SAMPLING["top_p"]
    top_k: int = LF_SAMPLING["top_k"]
    seed: int = 42

    def describe(self) -> dict:
        if self.sampling == "greedy":
            return {"sampling": "greedy", "max_new_tokens": self.max_new_tokens}
        return {"sampling": "lf", "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed}


@dataclass(frozen=True)
class Request:
    """One prompt to continue: ``index`` names the sample, ``ids`` are the prompt's tokens."""

    index: int
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Completion:
    """One finished reply: ``finish`` is ``stop`` (its stop rule ended it) or ``length`` (max_new_tokens)."""

    index: int
    raw: str                      # the output text, special tokens kept
    tokens: int                   # generated tokens
    finish: Literal["stop", "length"]
