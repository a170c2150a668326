"""haruhi-convert end to end: LoRA merge + GGUF export checked against transformers + PEFT through real llama.cpp.

The reference for every comparison is built without our code: transformers loads the base, PEFT merges
the adapter (``merge_and_unload``), and the logits of the same token ids are compared with llama.cpp's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from convert import cli, quant
from convert.verify import compare, gguf_logits, reference_logits, tokenize, verify_gguf
from haruhi_tui.core import harmony
from haruhi_tui.core.gguf_header import GGUFHeader

pytestmark = pytest.mark.timeout(600)


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run ``haruhi-convert ARGS`` in-process through its console entry point; (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["haruhi-convert", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def make_lora(base: Path, out: Path, *, experts: bool = True, seed: int = 1, r: int = 4) -> Path:
    """A PEFT LoRA on attention (+ the 3-D expert weights) with random, non-zero A and B of a realistic size."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"] if experts else None,
        init_lora_weights=False,
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.1)  # delta about the size of the base weights, like a trained adapter
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lora(tiny_gpt_oss, tmp_path_factory) -> Path:
    return make_lora(tiny_gpt_oss, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="session")
def reference(tiny_gpt_oss, lora, out_dir):
    """Probe token ids (tokenized by llama.cpp from a GGUF we wrote) and the PEFT-merged model's logits."""
    from convert.pipeline import ConvertOptions, convert

    path = convert(ConvertOptions(base=tiny_gpt_oss, adapter=lora, out=out_dir / "ref_f32.gguf", out_type="f32")).output
    ids = tokenize(path)
    return ids, reference_logits(tiny_gpt_oss, lora, ids), path


# -- encodings ------------------------------------------------------------------------------------

def test_encoders_match_ggml_reference_bit_for_bit():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((96, 256)) * rng.choice([1e-4, 1.0, 300.0], size=(96, 1))).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[1] = np.round(x[1] * 4) / 4  # values exactly on rounding ties
    x[2] = (np.round(x[2] * 2) / 2) * np.float32(2.0**-3)
    for qtype in (quant.QT.Q8_0, quant.QT.MXFP4, quant.QT.BF16, quant.QT.F16):
        expected = gguf.quants.quantize(x, qtype).view(np.uint8).reshape(-1)
        assert np.array_equal(quant.encode(torch.from_numpy(x), qtype).view(np.uint8).reshape(-1), expected), qtype.name
    packed = gguf.quants.quantize(x, quant.QT.MXFP4)
    assert np.array_equal(quant.dequantize_mxfp4(packed, 256).numpy(), gguf.quants.dequantize(packed, quant.QT.MXFP4))


@pytest.mark.slow
def test_openai_mxfp4_layout_repacks_losslessly(tiny_gpt_oss_mxfp4):
    from tiny_models import mxfp4_dequantize

    from convert.checkpoint import Checkpoint

    ckpt = Checkpoint(tiny_gpt_oss_mxfp4)
    blocks = ckpt.read("model.layers.0.mlp.experts.down_proj_blocks")
    scales = ckpt.read("model.layers.0.mlp.experts.down_proj_scales")
    expected = mxfp4_dequantize(blocks, scales).transpose(1, 2)  # the fixture's own decoder, (E, out, in)
    assert torch.equal(quant.dequantize_hf_mxfp4(blocks, scales), expected)
    ggml = quant.hf_mxfp4_to_ggml(blocks, scales)
    cols = blocks.shape[-2] * 32
    assert torch.equal(quant.dequantize_mxfp4(ggml, cols).reshape(expected.shape), expected)


# -- merged gpt-oss against transformers + PEFT ---------------------------------------------------------

@pytest.mark.slow
def test_f32_merge_matches_peft_to_rounding(reference):
    ids, ref, path = reference
    got = gguf_logits(path, ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-3 * ref.std()  # the layouts and the merge math are exact
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("out_type", ["bf16", "f16", "q8_0", "mxfp4"])
def test_merged_types_agree_with_peft(monkeypatch, capsys, tiny_gpt_oss, lora, out_dir, reference, out_type):
    ids, ref, _ = reference
    out = out_dir / f"merged_{out_type}.gguf"
    code, err = run_cli(monkeypatch, capsys, "--base", tiny_gpt_oss, "--adapter", lora, "--out", out,
                        "--type", out_type)
    assert code == 0, err
    report = compare(ref, gguf_logits(out, ids), out_type)
    assert report.ok, report.line()
    if out_type in ("f16", "bf16"):
        assert report.top1_agree == 1.0 and report.confident >= len(ids) // 4, report.line()
    types = {name: t.type.name for name, t in GGUFHeader(out).tensors.items()}
    expert_type = {"bf16": "BF16", "f16": "F16", "q8_0": "Q8_0", "mxfp4": "MXFP4"}[out_type]
    assert types["blk.0.ffn_gate_exps.weight"] == expert_type
    assert types["blk.1.attn_q.weight"] == ("Q8_0" if out_type == "mxfp4" else expert_type)
    assert types["blk.0.ffn_gate_inp.weight"] == "F32" and types["blk.0.attn_sinks.weight"] == "F32"


@pytest.mark.slow
def test_mxfp4_base_merges_like_the_bf16_base(tiny_gpt_oss_mxfp4, lora, out_dir, reference):
    """The MXFP4-stored fixture is the same model: the merge from its blocks/scales gives the same logits."""
    ids, ref, _ = reference
    from convert.pipeline import ConvertOptions, convert

    out = convert(ConvertOptions(base=tiny_gpt_oss_mxfp4, adapter=lora, out=out_dir / "mx_f32.gguf",
                                 out_type="f32")).output
    got = gguf_logits(out, ids)
    assert np.abs(got - ref).max() < 1e-3 * ref.std()
    default = convert(ConvertOptions(base=tiny_gpt_oss_mxfp4, adapter=lora, out=out_dir / "mx_default.gguf")).output
    report = verify_gguf(default, tiny_gpt_oss_mxfp4, lora, "mxfp4")
    assert report.ok, report.line()


@pytest.mark.slow
def test_attention_only_lora_keeps_original_mxfp4_experts_bit_exact(tiny_gpt_oss_mxfp4, tmp_path):
    from convert.checkpoint import Checkpoint
    from convert.pipeline import ConvertOptions, convert

    adapter = make_lora(tiny_gpt_oss_mxfp4, tmp_path / "attn", experts=False)
    out = convert(ConvertOptions(base=tiny_gpt_oss_mxfp4, adapter=adapter, out=tmp_path / "m.gguf")).output
    index = GGUFHeader(out)
    ckpt = Checkpoint(tiny_gpt_oss_mxfp4)
    blocks = ckpt.read("model.layers.1.mlp.experts.gate_up_proj_blocks")
    scales = ckpt.read("model.layers.1.mlp.experts.gate_up_proj_scales")
    assert index.tensors["blk.1.ffn_up_exps.weight"].type.name == "MXFP4"
    expected = quant.hf_mxfp4_to_ggml(blocks[:, 1::2], scales[:, 1::2]).reshape(-1)
    assert np.array_equal(index.raw("blk.1.ffn_up_exps.weight"), expected)
    report = verify_gguf(out, tiny_gpt_oss_mxfp4, adapter, "mxfp4")
    assert report.ok, report.line()


@pytest.mark.slow
def test_q4_k_m_through_llama_cpp(monkeypatch, capsys, tmp_path):
    from tiny_models import build_tiny_gpt_oss

    base = build_tiny_gpt_oss(tmp_path / "k", intermediate_size=256)  # expert rows of 256: real K-quant blocks
    adapter = make_lora(base, tmp_path / "lora")
    out = tmp_path / "q4.gguf"
    code, err = run_cli(monkeypatch, capsys, "-b", base, "-a", adapter, "-o", out, "-t", "q4_k_m", "--verify")
    assert code == 0, err
    assert "Q4_K" in GGUFHeader(out).type_counts()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the bf16 intermediate is gone


@pytest.mark.slow
def test_verify_fails_when_the_gguf_is_not_the_merged_model(reference, tiny_gpt_oss, lora, out_dir, monkeypatch,
                                                            capsys):
    """--verify must catch a wrong model: here a GGUF of the base alone, checked against base + LoRA."""
    ids, ref, _ = reference
    base_gguf = out_dir / "base_only_bf16.gguf"
    assert run_cli(monkeypatch, capsys, "-b", tiny_gpt_oss, "-o", base_gguf, "-t", "bf16")[0] == 0
    report = compare(ref, gguf_logits(base_gguf, ids), "bf16")
    assert not report.ok and "verification failed" in report.failure()


# -- LoRA adapter GGUF --------------------------------------------------------------------------

@pytest.mark.slow
def test_adapter_only_export_applies_in_llama_cpp_like_the_merge(monkeypatch, capsys, tiny_gpt_oss, lora, out_dir,
                                                                 reference):
    """llama.cpp applies LoRA to gpt-oss's 3-D expert tensors too (per selected expert)."""
    ids, ref, _ = reference
    base_gguf, adapter_gguf = out_dir / "base_f32.gguf", out_dir / "lora_f32.gguf"
    assert run_cli(monkeypatch, capsys, "-b", tiny_gpt_oss, "-o", base_gguf, "-t", "f32")[0] == 0
    code, err = run_cli(monkeypatch, capsys, "-b", tiny_gpt_oss, "-a", lora, "--adapter-only", "-o", adapter_gguf,
                        "-t", "f32")
    assert code == 0, err
    names = set(GGUFHeader(adapter_gguf).tensors)
    assert {"blk.0.ffn_gate_exps.weight.lora_a", "blk.0.ffn_up_exps.weight.lora_b",
            "blk.1.attn_v.weight.lora_a"} <= names
    got = gguf_logits(base_gguf, ids, lora=adapter_gguf)
    assert np.abs(got - ref).max() < 1e-3 * ref.std()


def _fancy_lora(base: Path, out: Path, *, full_copies: bool) -> Path:
    """rsLoRA with per-module rank and alpha; with ``full_copies`` also LoRA on the embedding and a trained lm_head
    copy."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj"] + (["embed_tokens"] if full_copies else [])
    config = LoraConfig(r=4, lora_alpha=8, use_rslora=True, rank_pattern={"q_proj": 8}, alpha_pattern={"v_proj": 3},
                        target_modules=modules, modules_to_save=["lm_head"] if full_copies else None,
                        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                        init_lora_weights=False)
    torch.manual_seed(3)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.mul_(0.1)
            elif "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.01)
    peft_model.save_pretrained(out)
    return out


@pytest.mark.slow
def test_rslora_patterns_embedding_and_saved_modules_merge_exactly(monkeypatch, capsys, tiny_gpt_oss, out_dir,
                                                                   tmp_path):
    fancy = _fancy_lora(tiny_gpt_oss, tmp_path / "fancy", full_copies=True)
    code, err = run_cli(monkeypatch, capsys, "-b", tiny_gpt_oss, "-a", fancy, "-o", tmp_path / "m.gguf", "-t", "f32",
                        "--verify")
    assert code == 0, err
    code, err = run_cli(monkeypatch, capsys, "-b", tiny_gpt_oss, "-a", fancy, "--adapter-only",
                        "-o", tmp_path / "a.gguf")
    assert code == 1 and "modules_to_save" in err
    # per-module scaling cannot be one alpha: it is folded into lora_b and alpha is 0
    plain = _fancy_lora(tiny_gpt_oss, tmp_path / "plain", full_copies=False)
    base_gguf = out_dir / "base_f32.gguf"
    if not base_gguf.exists():
        assert run_cli(monkeypatch, capsys, "-b", tiny_gpt_oss, "-o", base_gguf, "-t", "f32")[0] == 0
    code, err = run_cli(monkeypatch, capsys, "-b", tiny_gpt_oss, "-a", plain, "--adapter-only",
                        "-o", tmp_path / "p.gguf", "-t", "f32", "--verify", "--base-gguf", base_gguf)
    assert code == 0, err
    assert GGUFHeader(tmp_path / "p.gguf").metadata["adapter.lora.alpha"] == 0.0


def _tiny_dense(kind: str, out: Path) -> Path:
    """A tiny random Llama 3 / Qwen2 / Qwen3 (with the o200k tokenizer: only the weights' layout matters here)."""
    from tiny_models import save_harmony_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=201088, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
    config_class, model_class, extra = {
        "llama": (LlamaConfig, LlamaForCausalLM, {"rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 32}),
    }[kind]
    torch.manual_seed(0)
    model = model_class(config_class(**common, **extra))
    with torch.no_grad():
        model.lm_head.weight.mul_(64**-0.5 / 0.02)  # logits with a clear top-1
    model.save_pretrained(out)
    save_harmony_tokenizer(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_llama_and_qwen_merge_exactly(monkeypatch, capsys, tmp_path, kind):
    """Same code path, per-architecture table: Llama's q/k rows are permuted for ggml's RoPE (the LoRA delta
    with them), Llama 3 RoPE scaling becomes rope_freqs, Qwen2 keeps q/k/v biases, Qwen3 its q/k norms."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = _tiny_dense(kind, tmp_path / kind)
    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
        init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.1)
    adapter = tmp_path / "lora"
    peft_model.save_pretrained(adapter)
    code, err = run_cli(monkeypatch, capsys, "-b", base, "-a", adapter, "-o", tmp_path / "m.gguf", "-t", "f32",
                        "--verify")
    assert code == 0, err
    if kind == "llama":
        assert "rope_freqs.weight" in GGUFHeader(tmp_path / "m.gguf").tensors
        assert run_cli(monkeypatch, capsys, "-b", base, "-o", tmp_path / "base.gguf", "-t", "f32")[0] == 0
        code, err = run_cli(monkeypatch, capsys, "-b", base, "-a", adapter, "--adapter-only", "-o", tmp_path / "a.gguf",
                            "-t", "f32", "--verify", "--base-gguf", tmp_path / "base.gguf")
        assert code == 0, err


# -- chat through the embedded template ---------------------------------------------------------------

@pytest.mark.slow
def test_gguf_chats_with_the_harmony_template(reference):
    from llama_cpp import Llama, llama_cpp

    _, _, path = reference
    llm = Llama(model_path=str(path), n_ctx=512, verbose=False, n_threads=2)
    try:
        assert llm.metadata["tokenizer.chat_template"] == harmony.CHAT_TEMPLATE
        assert llm.metadata["tokenizer.ggml.pre"] == "gpt-4o"
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        ids = harmony.SPECIAL_TOKEN_IDS
        assert llama_cpp.llama_vocab_is_eog(vocab, ids[harmony.RETURN])
        assert llama_cpp.llama_vocab_is_eog(vocab, ids[harmony.CALL])
        assert llama_cpp.llama_vocab_eos(vocab) == ids[harmony.RETURN]
        prompt = "<|start|>user<|message|>你好<|end|>"
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        assert tokens[:3] == [ids[harmony.START], 1428, ids[harmony.MESSAGE]]
        reply = llm.create_chat_completion(messages=[{"role": "system", "content": "你是凉宫春日。"},
                                                     {"role": "user", "content": "你好"}], max_tokens=4, temperature=0)
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["usage"]["prompt_tokens"] > 10
    finally:
        llm.close()


# -- Gemma 3 round trip -------------------------------------------------------------------------------

def _llama_cpp_f32(src: Path, out: Path) -> Path:
    """llama.cpp's own dequantization of a GGUF to all-F32 (its quantizer, allowed to requantize): the
    original's exact weights in the type our round trip writes, made without our code."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = gguf.LlamaFileType.ALL_F32
    params.allow_requantize = True
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) == 0
    return out


def _greedy_tokens(path: Path, prompt: str, n: int = 6) -> tuple[list[int], list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, verbose=False, n_threads=2)
    try:
        ids = llm.tokenize(prompt.encode(), add_bos=True)
        tokens = []
        for token in llm.generate(ids, top_k=1, temp=0.0):
            tokens.append(token)
            if len(tokens) == n:
                break
        return ids, tokens
    finally:
        llm.close()


@pytest.mark.slow
def test_gemma3_round_trip_matches_the_original_gguf(monkeypatch, capsys, gemma_hf, tmp_path):
    """GGUF -> HF (haruhi models) -> GGUF (haruhi-convert): same weights, same vocabulary, same greedy tokens.

    The original is Q4_K_M and the round trip F32: llama.cpp runs them through different CPU kernels (a
    K-quant matmul quantizes the activations to 8 bits; which SIMD kernel runs depends on the CPU), so their
    greedy tokens may part on another machine even though the weights are the same. The tokens are therefore
    compared like with like: against llama.cpp's own F32 dequantization of the original, whose every tensor
    must equal ours bit for bit; same weights, same type, same kernels, so the same tokens on any CPU.
    """
    from haruhi_tui.services.bundled_model import default_gguf

    original = default_gguf()
    out = tmp_path / "gemma.gguf"
    code, err = run_cli(monkeypatch, capsys, "-b", gemma_hf, "-o", out, "-t", "f32")
    assert code == 0, err
    arrays = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
    ours, theirs = GGUFHeader(out, arrays), GGUFHeader(original, arrays)
    assert set(ours.tensors) == set(theirs.tensors)
    for name in theirs.tensors:  # every weight of layer 0, the last layer and the output norm
        if name.startswith(("blk.0.", "blk.17.", "output_norm")):
            assert np.array_equal(ours.values(name), theirs.values(name)), name
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        assert ours.metadata[key] == theirs.metadata[key], key
    our_scores = np.asarray(ours.metadata["tokenizer.ggml.scores"])
    their_scores = np.asarray(theirs.metadata["tokenizer.ggml.scores"])
    # the same merge order
    assert np.array_equal(np.argsort(-our_scores, kind="stable"), np.argsort(-their_scores, kind="stable"))
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
                "gemma3.attention.sliding_window", "gemma3.rope.freq_base", "gemma3.attention.key_length"):
        assert ours.metadata[key] == theirs.metadata[key], key

    reference = GGUFHeader(_llama_cpp_f32(original, tmp_path / "original-f32.gguf"))
    assert set(reference.tensors) == set(ours.tensors)
    for name, tensor in reference.tensors.items():
        assert tensor.type == ours.tensors[name].type == gguf.GGMLQuantizationType.F32, name
        assert np.array_equal(ours.values(name), reference.values(name)), name
    prompt = "春日：「我对普通的人类没有兴趣。」阿虚：「"
    assert _greedy_tokens(reference.path, prompt) == _greedy_tokens(out, prompt)


# -- events, errors, interruption ------------------------------------------------------------------

@pytest.mark.slow
def test_events_are_written_for_the_launcher(monkeypatch, capsys, tiny_gpt_oss, tmp_path):
    from haruhi_tui.core.events import job_state, read_events

    code, err = run_cli(monkeypatch, capsys, "-b", tiny_gpt_oss, "-o", tmp_path / "m.gguf", "-t", "bf16",
                        "--events", tmp_path / "job")
    assert code == 0, err
    events, _ = read_events(tmp_path / "job")
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "end"
    state = job_state(tmp_path / "job")
    assert state.status == "completed" and state.done == state.total == 41 and state.unit == "tensor"
    assert state.outputs["gguf"] == str(tmp_path / "m.gguf") and state.metrics["tensors"] == 41


def _broken_adapter(lora: Path, tmp_path: Path, edit) -> Path:
    import json
    import shutil

    target = tmp_path / "broken"
    shutil.copytree(lora, target)
    edit(target, json)
    return target


def test_bad_input_gives_one_line_errors(monkeypatch, capsys, tiny_gpt_oss, lora, gemma_hf, tmp_path):
    out = tmp_path / "m.gguf"

    def fails(*args, expect: str) -> None:
        code, err = run_cli(monkeypatch, capsys, *args)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code != 0 and len(lines) == 1 and expect in lines[0] and lines[0].startswith("error:"), err
        assert not out.exists()

    fails("-b", tmp_path / "nope", "-o", out, expect="base model folder not found")
    fails("-b", tiny_gpt_oss, "-a", tmp_path / "nope", "-o", out, expect="adapter folder not found")
    fails("-b", tiny_gpt_oss, "-o", out, "-t", "q2_k", expect="unknown --type q2_k")
    fails("-b", gemma_hf, "-o", out, "-t", "mxfp4", expect="Gemma 3 has none")
    fails("-b", tiny_gpt_oss, "-o", tmp_path / "m.bin", expect="should end in .gguf")
    # an adapter trained on another architecture, and one whose shapes do not fit
    def other_arch(d, json):
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg["auto_mapping"] = {"base_model_class": "LlamaForCausalLM"}
        (d / "adapter_config.json").write_text(json.dumps(cfg))

    fails("-b", tiny_gpt_oss, "-a", _broken_adapter(lora, tmp_path / "a1", other_arch), "-o", out,
          expect="trained on LlamaForCausalLM")
    fails("-b", gemma_hf, "-a", lora, "-o", out, expect="adapter")

    def wrong_shape(d, json):
        from safetensors.torch import load_file, save_file

        state = load_file(d / "adapter_model.safetensors")
        key = next(k for k in state if k.endswith("q_proj.lora_A.weight"))
        state[key] = torch.zeros(state[key].shape[0], 32)
        save_file(state, d / "adapter_model.safetensors")

    fails("-b", tiny_gpt_oss, "-a", _broken_adapter(lora, tmp_path / "a2", wrong_shape), "-o", out,
          expect="does not fit the base")

    def truncated(d, json):
        data = (d / "adapter_model.safetensors").read_bytes()
        (d / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])

    fails("-b", tiny_gpt_oss, "-a", _broken_adapter(lora, tmp_path / "a3", truncated), "-o", out, expect="truncated")
    import shutil

    no_tok = tmp_path / "no_tok"
    shutil.copytree(tiny_gpt_oss, no_tok)
    (no_tok / "tokenizer.json").unlink()
    fails("-b", no_tok, "-o", out, expect="tokenizer.json not found")
    unsupported = tmp_path / "bert"
    shutil.copytree(tiny_gpt_oss, unsupported)
    (unsupported / "config.json").write_text('{"architectures": ["BertModel"], "num_hidden_layers": 2}')
    fails("-b", unsupported, "-o", out, expect="unsupported architecture BertModel")


@pytest.mark.slow
def test_refuses_when_the_disk_is_too_small(monkeypatch, capsys, tiny_gpt_oss, tmp_path):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    code, err = run_cli(monkeypatch, capsys, "-b", tiny_gpt_oss, "-o", tmp_path / "m.gguf", "-t", "f32")
    assert code == 1 and "not enough disk space" in err and not (tmp_path / "m.gguf").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_conversion_leaves_no_partial_model(gemma_hf, tmp_path, sig):
    """Ctrl-C or kill mid-write: no model.gguf; Ctrl-C/TERM remove the temp file, a KILLed one is swept next run."""
    import signal
    import subprocess
    import time

    out = tmp_path / "model.gguf"
    cmd = [sys.executable, "-m", "convert.cli", "-b", str(gemma_hf), "-o", str(out), "-t", "q8_0"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial") and p.stat().st_size > 10**6 for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "conversion ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    if sig == "SIGKILL":
        assert len(leftovers) == 1 and leftovers[0].endswith(".partial")
        from haruhi_tui.core.fsutil import remove_stale_temps

        assert remove_stale_temps(out) and not list(tmp_path.iterdir())
    else:
        assert leftovers == [] and "interrupted" in err


@pytest.mark.slow
def test_kill_9_during_q4_k_m_leaves_a_temp_the_next_run_sweeps(gemma_hf, tmp_path):
    """Q4_K_M goes through a bf16 intermediate (``.NAME.PID.bf16.partial.tmp``); a kill -9 leaves it, and the
    next conversion to the same file removes it (its process is gone) before anything else."""
    import signal
    import subprocess
    import time

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "model.gguf"
    cmd = [sys.executable, "-m", "convert.cli", "-b", str(gemma_hf), "-o", str(out), "-t", "q4_k_m"]
    proc = subprocess.Popen(cmd, cwd=root, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".bf16.partial.tmp") and p.stat().st_size > 10**6 for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "conversion ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".model.gguf.{proc.pid}.") and not out.exists()
    again = subprocess.run([*cmd[:4], str(tmp_path / "no-such-model"), *cmd[5:]], cwd=root, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert f"removed {left[0]}" in again.stdout + again.stderr and list(tmp_path.iterdir()) == []


def test_a_virtual_file_system_is_named_not_called_a_full_disk(monkeypatch, capsys, tiny_gpt_oss):
    code, err = run_cli(monkeypatch, capsys, "-b", tiny_gpt_oss, "-o", "/proc/m.gguf", "-t", "f32")
    assert code == 1 and "virtual file system" in err and "disk space" not in err and "Traceback" not in err


def _edit_json(path: Path, **values) -> None:
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(values)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("where, edit", [
    ("adapter", lambda d: _edit_json(d / "adapter_config.json", lora_alpha="sixteen")),
    ("adapter", lambda d: _edit_json(d / "adapter_config.json", alpha_pattern=["q_proj"])),
    ("adapter", lambda d: _edit_json(d / "adapter_config.json", rank_pattern={"(": 4})),
    ("adapter", lambda d: _edit_json(d / "adapter_config.json", auto_mapping="GptOss")),
    ("base", lambda d: _edit_json(d / "config.json", num_hidden_layers="two")),
    ("base", lambda d: _edit_json(d / "config.json", hidden_size=None)),
    ("base", lambda d: _edit_json(d / "config.json", text_config="none")),
    ("base", lambda d: (d / "tokenizer.json").write_text('{"model": "bpe"}', encoding="utf-8")),
    ("base", lambda d: (d / "tokenizer_config.json").write_text("{", encoding="utf-8")),
])
@pytest.mark.slow
def test_config_files_with_values_of_the_wrong_type_are_one_line_errors(monkeypatch, capsys, tiny_gpt_oss, lora,
                                                                        tmp_path, where, edit):
    """Each gave a traceback (ValueError, AttributeError, TypeError, re.error, JSONDecodeError)."""
    import shutil

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    shutil.copytree(tiny_gpt_oss, base)
    shutil.copytree(lora, adapter)
    edit(base if where == "base" else adapter)
    code, err = run_cli(monkeypatch, capsys, "-b", base, "-a", adapter, "-o", tmp_path / "m.gguf", "-t", "f32")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("damage, problem", [
    (lambda data, n: data[:-5], "truncated"),
    (lambda data, n: data + b"xx", "after the last tensor"),
    (lambda data, n: data[:8] + b"[1]" + b" " * (n - 3) + data[8 + n:], "header is not an object"),
    (lambda data, n: b"", "too short"),
])
def test_a_damaged_safetensors_file_is_named(monkeypatch, capsys, tiny_gpt_oss, tmp_path, damage, problem):
    import shutil
    import struct

    base = tmp_path / "base"
    shutil.copytree(tiny_gpt_oss, base)
    weights = next(base.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(damage(data, struct.unpack("<Q", data[:8])[0]))
    code, err = run_cli(monkeypatch, capsys, "-b", base, "-o", tmp_path / "m.gguf", "-t", "f32")
    assert code == 1 and problem in err and weights.name in err and "Traceback" not in err


@pytest.mark.slow
def test_the_gguf_has_the_usual_permissions(monkeypatch, capsys, tiny_gpt_oss, tmp_path):
    code, err = run_cli(monkeypatch, capsys, "-b", tiny_gpt_oss, "-o", tmp_path / "m.gguf", "-t", "f32")
    assert code == 0, err
    assert (tmp_path / "m.gguf").stat().st_mode & 0o777 == 0o644 and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
