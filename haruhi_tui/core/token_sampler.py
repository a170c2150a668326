"""Picking the next token from llama.cpp's logits, at a cost that does not grow with the vocabulary.

llama-cpp-python's sampler chain starts with llama.cpp's repeat-penalty sampler, which looks every token of
the vocabulary up in its window's counts: Gemma 3 has 262,144 tokens, so a penalty of 1.1 cost ~1.1 ms a
token against ~0.5 ms without it (measured on the project's 2-core machine), 5-10 % of a decode step. Here
the same penalty is applied to the logits of the few tokens in the window only, in place in llama.cpp's
logits buffer, before the rest of the chain reads them. Greedy decoding then takes numpy's argmax (the
first of equal maxima, as llama.cpp's greedy sampler), not llama.cpp's chain, which copies all 262,144
logits into a candidate array first (~0.5 ms).

The semantics are llama-cpp-python's ``Llama.generate`` exactly: the window is the last
``Llama.last_n_tokens_size`` (64) tokens of this reply (prompt tokens are not penalised), a token in it has
its logit divided by the penalty (multiplied when it is not positive) once however often it occurs, then
top-k, top-p, min-p, temperature and a seeded draw (typical-p 1.0, a no-op there, is left out). The same
seed gives the same reply as before, and greedy decoding is exact.

``min_tokens`` keeps a reply from ending early (SillyTavern's "min length"; the chat benchmark measures
streaming over replies long enough to mean something): until that many tokens are out, a token that
``ends(token)`` says would end the reply is set to -inf and the pick is made again. Only the picked token
is checked, so this costs nothing while the model does not want to stop; the end of a reply split across
two tokens (a stop string's bytes in two byte tokens) is not caught.
"""

from __future__ import annotations

import collections
from typing import Callable

import numpy as np


class TokenSampler:
    """The sampling of one reply: call :meth:`sample` after each llama.cpp decode, it returns the token and
    remembers it for the penalty. Free llama.cpp's chain with :meth:`close`."""

    def __init__(self, llama, *, temperature: float, top_k: int, top_p: float, min_p: float,
                 repeat_penalty: float, seed: int, min_tokens: int = 0,
                 ends: Callable[[int], bool] | None = None) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._ctx = llama._ctx.ctx
        self._n_vocab = llama.n_vocab()
        self.penalty = np.float32(repeat_penalty)
        self.window: collections.deque[int] = collections.deque(maxlen=max(0, llama.last_n_tokens_size))
        self.greedy = temperature <= 0
        self.min_tokens = min_tokens if ends is not None else 0
        self.ends = ends
        self.count = 0  # tokens sampled so far
        self._chain = None
        if not self.greedy:
            lib = llama_cpp
            chain = self._chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
            for sampler in (lib.llama_sampler_init_top_k(top_k), lib.llama_sampler_init_top_p(top_p, 1),
                            lib.llama_sampler_init_min_p(min_p, 1), lib.llama_sampler_init_temp(temperature),
                            lib.llama_sampler_init_dist(seed)):
                lib.llama_sampler_chain_add(chain, sampler)

    def logits(self) -> np.ndarray:
        """The last decoded token's logits: llama.cpp's own buffer (no copy), valid until the next decode."""
        pointer = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def penalize(self, logits: np.ndarray) -> None:
        """llama.cpp's repeat penalty on the tokens of the window, in place."""
        if self.penalty == 1 or not self.window:
            return
        ids = np.fromiter(set(self.window), dtype=np.intp)
        values = logits[ids]
        logits[ids] = np.where(values <= 0, values * self.penalty, values / self.penalty)

    def sample(self) -> int:
        logits = self.logits()
        self.penalize(logits)
        while True:
            if self.greedy:
                token = int(logits.argmax())
            else:  # reads the penalised logits from the same buffer; accepts the token into the draw's state
                token = int(self._lib.llama_sampler_sample(self._chain, self._ctx, -1))
            if self.count >= self.min_tokens or not self.ends(token) or not np.isfinite(logits).any():
                break
            logits[token] = -np.inf  # too early to end: the next best
        self.count += 1
        self.window.append(token)
        return token

    def close(self) -> None:
        if self._chain is not None:
            self._lib.llama_sampler_free(self._chain)
            self._chain = None
