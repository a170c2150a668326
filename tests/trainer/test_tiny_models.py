"""The test fixtures themselves: the rebuilt o200k_harmony tokenizer, our chat template, the tiny gpt-oss."""

from __future__ import annotations

import json
from hashlib import sha256

import pytest
import torch
from tiny_models import EOS_IDS, TINY_SHAPE, VOCAB_SIZE, build_tiny_gpt_oss, mxfp4_dequantize, mxfp4_quantize

from haruhi_tui.core import harmony

EXTRA_LINES = [
    "emoji \U0001f680\U0001f525\U0001f44d mixed 😶\u200d🌫️ ✅ 🦙🦙 and 春日😁！",
    "   leading\n\ttabs and  spaces   \r\n windows lines \r\n",
    "don't can't I'll we've they're 'tis 'TWAS HELLO'S",
    "ALLCAPS lowercase MixedCase 1234567890 3.14159 0xDEADBEEF 99.99%",
    "https://example.com/path?q=1&x=2#frag <html><body>x</body></html>",
    "日本語のトークナイザー 中文 한국어 Ω≈ç√∫ Икс हिन्दी café résumé naïve — Zürich",
    "def f(x):\n    return [i**2 for i in range(100)]  # 1+2+3==6\n\n\n",
    "",
]
# The text llama.cpp's convert_hf_to_gguf.py tokenizes to recognise a pre-tokenizer, and the hash it
# expects for gpt-4o / o200k (gpt-oss). If ours matches, llama.cpp treats our tokenizer as the real one.
LLAMA_CPP_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
GPT_4O_CHKHSH = "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e"


@pytest.fixture(scope="module")
def tokenizer(harmony_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(harmony_tokenizer_dir)


@pytest.fixture(scope="module")
def quick():
    import quicktok

    return quicktok.get_encoding("o200k_harmony")


def _corpus(characters_dir) -> list[str]:
    texts = list(EXTRA_LINES)
    for folder in sorted(p for p in characters_dir.iterdir() if p.is_dir()):
        texts.append((folder / "system_prompt.txt").read_text(encoding="utf-8", errors="replace"))
        for path in sorted((folder / "texts").glob("*.txt"))[:8]:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return texts


@pytest.mark.slow
def test_tokenizer_encodes_like_quicktok_on_the_character_corpus(tokenizer, quick, characters_dir):
    texts = _corpus(characters_dir)
    assert sum(map(len, texts)) > 100_000
    mismatches = []
    for text in texts:
        ours = tokenizer.encode(text, add_special_tokens=False)
        if ours != quick.encode_ordinary(text):
            mismatches.append(text[:60])
        assert tokenizer.decode(ours) == text
    assert not mismatches, f"{len(mismatches)} texts tokenize differently, e.g. {mismatches[:3]}"


def test_llama_cpp_recognises_the_pre_tokenizer_as_gpt_4o(tokenizer):
    ids = tokenizer.encode(LLAMA_CPP_CHKTXT)
    assert sha256(str(ids).encode()).hexdigest() == GPT_4O_CHKHSH


def test_special_tokens_sit_at_their_real_ids(tokenizer, quick):
    assert len(tokenizer) == VOCAB_SIZE
    for text, token_id in harmony.SPECIAL_TOKEN_IDS.items():
        assert tokenizer.convert_tokens_to_ids(text) == token_id
    assert tokenizer.convert_tokens_to_ids("<|reserved_201087|>") == 201087
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id) == (200002, 199998, 199999)
    text = harmony.render("你是凉宫春日。", [("user", "阿虚:「早上好」"), ("assistant", "你迟到了！罚你请客！")],
                          add_generation_prompt=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == quick.encode_with_special(text)
    assert ids[0] == 200006 and ids[-1] == 200002
    assert tokenizer.decode(ids, skip_special_tokens=True) == harmony.strip_special_tokens(text)


CONVERSATIONS = [
    ("你是凉宫春日，SOS团团长。", [("user", "阿虚:「早上好」")]),
    ("你是凉宫春日。", [("user", "阿虚:「早上好」"), ("assistant", "你迟到了！罚你请客！"),
                        ("user", "阿虚:「又是我？」")]),
    ("  persona with spaces\n\n", [("user", "Harry:「Hello」"), ("assistant", "Hello, **Harry**.")]),
    ("", [("user", "没有系统提示"), ("assistant", "好的")]),
    ("   ", [("user", "only blank system")]),
    ("多轮", [("user", "一"), ("assistant", "二"), ("user", "三"), ("assistant", "四 😁\n第二行")]),
]


def _messages(developer: str, turns) -> list[dict]:
    messages = [{"role": "system", "content": developer}] if developer else []
    return messages + [{"role": role, "content": text} for role, text in turns]


@pytest.mark.parametrize("developer, turns", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_what_harmony_render_renders(tokenizer, developer, turns, add_generation_prompt):
    messages = _messages(developer, turns)
    expected = harmony.render(developer, turns, add_generation_prompt=add_generation_prompt)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert text == expected
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                        return_dict=False)
    assert list(ids) == tokenizer.encode(expected, add_special_tokens=False)


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_chat_template_reasoning_effort_and_identity(tokenizer, effort):
    developer, turns = CONVERSATIONS[1]
    text = tokenizer.apply_chat_template(_messages(developer, turns), tokenize=False, add_generation_prompt=True,
                                         reasoning_effort=effort, model_identity="You are Haruhi's game master.")
    assert text == harmony.render(developer, turns, reasoning_effort=effort, identity="You are Haruhi's game master.")


def test_chat_template_is_the_packaged_file_and_refuses_unknown_roles(tokenizer, harmony_tokenizer_dir):
    config = json.loads((harmony_tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == harmony.CHAT_TEMPLATE
    assert config["eos_token"] == harmony.RETURN
    with pytest.raises(Exception, match="user or assistant"):
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}],
                                      tokenize=False)


# -- the tiny model ---------------------------------------------------------------------------------

def _prompt_ids(tokenizer) -> torch.Tensor:
    developer, turns = CONVERSATIONS[1]
    return torch.tensor([tokenizer.encode(harmony.render(developer, turns), add_special_tokens=False)])


def test_tiny_gpt_oss_loads_with_transformers_and_gives_finite_logits(tiny_gpt_oss, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt_oss).eval()
    config = model.config
    assert config.model_type == "gpt_oss" and config.vocab_size == VOCAB_SIZE
    assert [config.layer_types, config.num_local_experts, config.num_experts_per_tok] == \
        [TINY_SHAPE["layer_types"], 4, 2]
    assert config.attention_bias and not config.tie_word_embeddings
    assert config.rope_parameters["rope_type"] == "yarn"
    assert model.generation_config.eos_token_id == EOS_IDS
    ids = _prompt_ids(tokenizer)
    with torch.no_grad():
        logits = model(ids).logits.float()
    assert logits.shape == (1, ids.shape[1], VOCAB_SIZE)
    assert torch.isfinite(logits).all()
    assert logits.std(dim=-1).min() > 0.3, "logits are flat: the model would not rank tokens"
    assert len(set(logits.argmax(-1)[0].tolist())) > 1
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids.shape[1]


@pytest.mark.slow
def test_build_is_deterministic_for_a_seed(tiny_gpt_oss, tmp_path):
    from safetensors.torch import load_file

    again = load_file(build_tiny_gpt_oss(tmp_path / "again", seed=0) / "model.safetensors")
    fixture = load_file(tiny_gpt_oss / "model.safetensors")
    assert again.keys() == fixture.keys()
    assert all(torch.equal(again[k], fixture[k]) for k in fixture)
    other = load_file(build_tiny_gpt_oss(tmp_path / "other", seed=1) / "model.safetensors")
    assert not torch.equal(other["model.embed_tokens.weight"], fixture["model.embed_tokens.weight"])


def test_mxfp4_checkpoint_is_stored_like_gpt_oss_20b(tiny_gpt_oss_mxfp4):
    from safetensors import safe_open

    config = json.loads((tiny_gpt_oss_mxfp4 / "config.json").read_text(encoding="utf-8"))
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    hidden, inter, experts = TINY_SHAPE["hidden_size"], 64, TINY_SHAPE["num_local_experts"]
    with safe_open(tiny_gpt_oss_mxfp4 / "model.safetensors", "pt") as f:
        names = set(f.keys())
        expect = {
            "gate_up_proj_blocks": ((experts, 2 * inter, hidden // 32, 16), torch.uint8),
            "gate_up_proj_scales": ((experts, 2 * inter, hidden // 32), torch.uint8),
            "down_proj_blocks": ((experts, hidden, inter // 32, 16), torch.uint8),
            "down_proj_scales": ((experts, hidden, inter // 32), torch.uint8),
        }
        for layer in range(TINY_SHAPE["num_hidden_layers"]):
            prefix = f"model.layers.{layer}.mlp.experts."
            assert prefix + "gate_up_proj" not in names and prefix + "down_proj" not in names
            for suffix, (shape, dtype) in expect.items():
                tensor = f.get_tensor(prefix + suffix)
                assert (tuple(tensor.shape), tensor.dtype) == (shape, dtype), suffix
            assert f.get_tensor(prefix + "gate_up_proj_bias").dtype == torch.bfloat16


def test_mxfp4_checkpoint_dequantizes_to_the_dense_model(tiny_gpt_oss, tiny_gpt_oss_mxfp4, tokenizer):
    """transformers dequantizes MXFP4 on CPU (no triton) with its own code: it must give our dense weights."""
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(tiny_gpt_oss).eval()
    quantized = AutoModelForCausalLM.from_pretrained(tiny_gpt_oss_mxfp4).eval()
    dense_state, quantized_state = dense.state_dict(), quantized.state_dict()
    assert dense_state.keys() == quantized_state.keys()
    experts = [k for k in dense_state if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(experts) == 2 * TINY_SHAPE["num_hidden_layers"]
    for name in dense_state:
        assert torch.equal(dense_state[name], quantized_state[name]), name
    ids = _prompt_ids(tokenizer)
    with torch.no_grad():
        assert torch.equal(dense(ids).logits, quantized(ids).logits)


def test_mxfp4_round_trip_is_exact_on_grid_values_and_close_otherwise():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(2, 64, 96, generator=generator) * 0.02
    blocks, scales = mxfp4_quantize(weight)
    assert blocks.shape == (2, 96, 2, 16) and scales.shape == (2, 96, 2)
    grid = mxfp4_dequantize(blocks, scales)
    assert grid.shape == weight.shape
    # E2M1 with the OCP shared exponent: rounding (and clamping at ±6) errs by at most a quarter of the block max.
    block_max = weight.abs().transpose(1, 2).reshape(2, 96, 2, 32).amax(-1, keepdim=True)
    error = (grid - weight).abs().transpose(1, 2).reshape(2, 96, 2, 32)
    assert (error <= block_max / 4 + 1e-9).all()
    again_blocks, again_scales = mxfp4_quantize(grid)
    assert torch.equal(again_blocks, blocks) and torch.equal(again_scales, scales)
