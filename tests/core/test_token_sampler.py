"""The engine's own sampling (haruhi_tui.core.token_sampler) on the bundled Gemma: the same tokens as
llama-cpp-python's ``Llama.generate`` with the same settings, the repeat penalty as llama.cpp applies it, and
replies kept from ending before ``min_tokens``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from haruhi_tui.core.engine import Sampling
from haruhi_tui.core.token_sampler import TokenSampler

PROMPTS = ["Once upon a time, there was a", "阿虚:「你为什么总是这么有精神？」\n凉宫春日:「"]


def engine_tokens(engine, prompt: str, sampling: Sampling) -> list[int]:
    """What the engine generates from an empty cache (the same batches as Llama.generate's)."""
    out: list[int] = []
    engine.llama.reset()
    for _ in engine.stream(prompt, sampling, on_token=out.append):
        pass
    return out


def generate_tokens(engine, prompt: str, sampling: Sampling, n: int) -> list[int]:
    llama = engine.llama
    llama.reset()
    llama.set_seed(sampling.seed)
    tokens = engine.tokenize_prompt(prompt)
    return list(itertools.islice(llama.generate(
        tokens, temp=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
        repeat_penalty=sampling.repeat_penalty, reset=True), n))


@pytest.mark.parametrize("temperature, penalty, seed", [(0.0, 1.3, 0), (0.8, 1.1, 0), (1.2, 1.2, 7)])
def test_the_engine_samples_the_tokens_llama_generate_samples(engine, temperature, penalty, seed):
    for prompt in PROMPTS:
        sampling = Sampling(temperature=temperature, repeat_penalty=penalty, seed=seed, max_tokens=32)
        ours = engine_tokens(engine, prompt, sampling)
        assert len(ours) >= 5
        assert ours == generate_tokens(engine, prompt, sampling, len(ours)), prompt


def test_the_repeat_penalty_changes_a_greedy_reply(engine):
    prompt = PROMPTS[0]
    plain = engine_tokens(engine, prompt, Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=48))
    penalised = engine_tokens(engine, prompt, Sampling(temperature=0.0, repeat_penalty=1.5, max_tokens=48))
    assert plain != penalised
    assert len(set(penalised)) >= len(set(plain))  # fewer repeats


def test_the_penalty_is_llama_cpps_once_per_token_in_the_window(engine):
    sampler = TokenSampler(engine.llama, temperature=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=2.0,
                           seed=0)
    sampler.window.extend([3, 5, 3, 3])
    logits = np.array([1.0, 1.0, 1.0, 4.0, 1.0, -4.0, 0.0], dtype=np.float32)
    sampler.penalize(logits)
    assert logits.tolist() == [1.0, 1.0, 1.0, 2.0, 1.0, -8.0, 0.0]  # divided if positive, multiplied if not
    sampler.close()


def test_a_reply_does_not_end_before_min_tokens(engine):
    prompt = PROMPTS[1]
    short = engine_tokens(engine, prompt, Sampling(temperature=0.0, max_tokens=64))
    assert engine.last_stats.stop_reason in ("stop", "end") and len(short) < 32
    text, _ = engine.generate_text(prompt, Sampling(temperature=0.0, max_tokens=40, min_tokens=40))
    stats = engine.last_stats
    assert (stats.generated_tokens, stats.stop_reason) == (40, "length")
    assert "」" not in text and "\n" not in text and len(text) > len(engine.token_text(short[0]))
