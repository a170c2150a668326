"""Training data: prompts in each style, label masks token by token, long samples, packing, collation.

Uses the real o200k_harmony tokenizer (``harmony_tokenizer_dir``) and, for packing and the loss, the tiny
real gpt-oss checkpoint (``tiny_gpt_oss``).
"""

from __future__ import annotations

import random

import pytest
import torch

from haruhi_tui.core import harmony
from haruhi_tui.core.prompt_format import SCRIPT_CLOSE, detect_style
from haruhi_tui.core.sharegpt import Sample
from trainer.batch_plan import plan_grouped, plan_packed
from trainer.train_data import (
    IGNORE_INDEX,
    DataStats,
    PromptRenderer,
    collate,
    conversation_of,
    encode_samples,
    fit_conversation,
)

PERSONA = "你是凉宫春日,SOS团的团长。说话直接,充满干劲。"
EXCHANGES = [("阿虚:「今天做什么?」", "寻找外星人、未来人和超能力者!"),
             ("古泉:「有新计划吗?」", "明天九点车站前集合,迟到的人请客。")]


def sample(exchanges=EXCHANGES, persona=PERSONA) -> Sample:
    messages = [{"role": "system", "content": persona}]
    for user, reply in exchanges:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return Sample(messages, "春日")


@pytest.fixture(scope="module")
def tokenizer(harmony_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(harmony_tokenizer_dir))


def labelled_runs(tokenizer, encoded) -> list[str]:
    """The decoded text of each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


@pytest.mark.slow
@pytest.mark.parametrize("use_template", [True, False], ids=["model-template", "haruhi-renderer"])
def test_harmony_loss_is_on_the_replies_and_their_end_tokens_only(tokenizer, use_template):
    assert detect_style("gpt_oss", tokenizer.chat_template) == "harmony"
    renderer = PromptRenderer(tokenizer, "harmony", use_template=use_template)
    encoded = renderer.encode(conversation_of(sample()))
    assert labelled_runs(tokenizer, encoded) == [EXCHANGES[0][1] + harmony.END, EXCHANGES[1][1] + harmony.RETURN]
    text = harmony.render(PERSONA, [(r, t) for u, a in EXCHANGES for r, t in (("user", u), ("assistant", a))],
                          add_generation_prompt=False)
    assert tokenizer.decode(encoded.input_ids, skip_special_tokens=False) == text
    # Segment-wise tokenization gives the same tokens as the whole text (boundaries are special tokens),
    # no BOS before <|start|>, and the persona is the developer message.
    assert encoded.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert encoded.input_ids[0] == harmony.SPECIAL_TOKEN_IDS[harmony.START]
    assert f"<|start|>developer<|message|># Instructions\n\n{PERSONA}<|end|>" in text


def test_a_foreign_chat_template_is_masked_by_rendering_prefixes(tokenizer):
    template = ("{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|start|>assistant<|message|>{% endif %}")
    assert detect_style("llama", template) == "chat"
    original = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        encoded = PromptRenderer(tokenizer, "chat", use_template=True).encode(conversation_of(sample()))
    finally:
        tokenizer.chat_template = original
    assert labelled_runs(tokenizer, encoded) == [reply + harmony.END for _, reply in EXCHANGES]
    assert encoded.input_ids[0] == tokenizer.bos_token_id  # the template does not write the BOS: we add it


def test_script_style_trains_the_lines_and_adds_the_missing_bos(tokenizer):
    encoded = PromptRenderer(tokenizer, "script", use_template=False).encode(conversation_of(sample()))
    assert encoded.input_ids[0] == tokenizer.bos_token_id and encoded.labels[0] == IGNORE_INDEX
    assert labelled_runs(tokenizer, encoded) == [reply + SCRIPT_CLOSE for _, reply in EXCHANGES]
    assert "春日:「" in tokenizer.decode(encoded.input_ids)


def test_long_samples_are_split_between_turns_and_every_reply_trains_once(tokenizer):
    renderer = PromptRenderer(tokenizer, "harmony", use_template=False)
    exchanges = [(f"阿虚:「第{i}个问题。" + "这是很长的一段叙述。" * 12 + "」", f"第{i}个回答,绝对不一样。")
                 for i in range(6)]
    conv = conversation_of(sample(exchanges))
    whole = len(renderer.encode(conv))
    stats = DataStats()
    pieces = fit_conversation(renderer, conv, whole // 2, stats)
    assert len(pieces) >= 2 and all(len(p) <= whole // 2 for p in pieces)
    trained = [run for p in pieces for run in labelled_runs(tokenizer, p)]
    assert all(run.endswith((harmony.END, harmony.RETURN)) for run in trained)
    assert sorted(run.removesuffix(harmony.END).removesuffix(harmony.RETURN) for run in trained) == \
        sorted(reply for _, reply in exchanges)
    for piece in pieces:  # each window keeps the persona
        assert PERSONA in tokenizer.decode(piece.input_ids)


def test_one_exchange_too_long_loses_the_start_of_its_user_turn(tokenizer):
    renderer = PromptRenderer(tokenizer, "harmony", use_template=False)
    story = "".join(f"第{i}段旧的叙述。" for i in range(200))
    conv = conversation_of(sample([(story + "阿虚:「最后一句话?」", "我的回答。")]))
    stats = DataStats()
    (piece,) = fit_conversation(renderer, conv, 300, stats)
    text = tokenizer.decode(piece.input_ids)
    assert len(piece) <= 300 and stats.truncated == 1
    assert labelled_runs(tokenizer, piece) == ["我的回答。" + harmony.RETURN]
    assert "阿虚:「最后一句话?」" in text and "第0段" not in text and PERSONA in text


def test_samples_without_trainable_text_leave_a_clear_error(tokenizer):
    renderer = PromptRenderer(tokenizer, "harmony", use_template=False)
    from haruhi_tui.core.errors import HaruhiError

    with pytest.raises(HaruhiError, match="raise --max-length"):
        encode_samples([sample()], renderer, 8)


def test_batch_plans_use_every_sequence_once_within_the_limits():
    rng = random.Random(0)
    lengths = [rng.randint(20, 700) for _ in range(300)] + [1024, 1024]
    packed = plan_packed(lengths, batch_size=4, max_length=1024, seed=1)
    used = sorted(i for batch in packed.batches for row in batch for i in row)
    assert used == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 1024 for batch in packed.batches for row in batch)
    assert all(len(batch) <= 4 for batch in packed.batches)
    assert packed.rows < len(lengths) / 2 and packed.real_token_share > 0.9
    grouped = plan_grouped(lengths, batch_size=4, max_length=1024, seed=1)
    assert sorted(row[0] for batch in grouped.batches for row in batch) == list(range(len(lengths)))
    assert all(len(batch) <= 4 for batch in grouped.batches) and sum(len(b) != 4 for b in grouped.batches) <= 1
    assert grouped.real_token_share > 0.9
    assert plan_packed(lengths, 4, 1024, seed=1).batches == packed.batches
    assert plan_packed(lengths, 4, 1024, seed=2).batches != packed.batches


def test_collation_restarts_positions_and_never_labels_a_sequence_start(tokenizer):
    renderer = PromptRenderer(tokenizer, "harmony", use_template=False)
    a, b = renderer.encode(conversation_of(sample())), renderer.encode(conversation_of(sample(EXCHANGES[:1])))
    batch = collate([[0, 1], [1]], [a, b], "packed", pad_id=tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= len(a) + len(b) and "attention_mask" not in batch
    positions = batch["position_ids"][0].tolist()
    assert positions[:len(a)] == list(range(len(a))) and positions[len(a):len(a) + len(b)] == list(range(len(b)))
    assert batch["labels"][0, 0] == IGNORE_INDEX and batch["labels"][0, len(a)] == IGNORE_INDEX
    assert (batch["labels"][1, len(b):] == IGNORE_INDEX).all()
    total, real, trainable = batch["haruhi_tokens"]
    assert all(type(n) is int for n in batch["haruhi_tokens"])  # plain ints: counting never waits for the GPU
    assert (total, real) == (2 * width, len(a) + 2 * len(b)) and trainable == a.trainable + 2 * b.trainable
    grouped = collate([[0], [1]], [a, b], "grouped", pad_id=tokenizer.pad_token_id)
    assert grouped["attention_mask"].sum().item() == len(a) + len(b) and "position_ids" not in grouped


@pytest.mark.slow
def test_packed_samples_do_not_attend_to_each_other(tokenizer, tiny_gpt_oss):
    """The second sample of a packed row gets the logits it gets alone; without restarting positions
    (one long causal sequence) it would not. transformers does not derive these masks for gpt-oss by
    itself: the engine's check finds that and installs ours."""
    from transformers import AutoModelForCausalLM

    from trainer.engines import keeps_packed_samples_apart, packing_leak

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt_oss), dtype=torch.float32, attn_implementation="eager")
    leak, scale = packing_leak(model, model.config.vocab_size)
    assert leak > 0.5 * scale  # plain transformers mixes packed gpt-oss samples
    assert keeps_packed_samples_apart(model, model.config.vocab_size)
    renderer = PromptRenderer(tokenizer, "harmony", use_template=False)
    a, b = renderer.encode(conversation_of(sample())), renderer.encode(conversation_of(sample(EXCHANGES[1:])))
    batch = collate([[0, 1]], [a, b], "packed", pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = model(input_ids=torch.tensor([b.input_ids])).logits[0]
        causal = model(input_ids=batch["input_ids"]).logits[0]
    span = slice(len(a), len(a) + len(b))
    torch.testing.assert_close(packed[span], alone, atol=2e-4, rtol=1e-4)
    assert not torch.allclose(causal[span], alone, atol=1e-2)


def test_sparse_logits_give_the_models_own_loss(tokenizer, tiny_gpt_oss, tmp_path):
    """The hf engine computes logits only where a label is; the loss must equal transformers' loss."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    from trainer.hf_trainer import HaruhiTrainer
    from trainer.run_state import TokenCounts

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt_oss), dtype=torch.float32, attn_implementation="eager")
    renderer = PromptRenderer(tokenizer, "harmony", use_template=False)
    seqs = [renderer.encode(conversation_of(sample())), renderer.encode(conversation_of(sample(EXCHANGES[1:])))]
    batch = collate([[0], [1]], seqs, "grouped", pad_id=tokenizer.pad_token_id)
    batch.pop("haruhi_tokens")
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = HaruhiTrainer(model=model, args=args, token_counts=TokenCounts(), sparse_logits=True)
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        theirs = model(**batch).loss
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)
