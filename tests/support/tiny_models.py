"""Tiny but real gpt-oss checkpoints and the real o200k_harmony tokenizer, built for tests.

The tokenizer is the genuine gpt-oss vocabulary: quicktok ships the o200k ranks, from which we rebuild a
Hugging Face byte-level BPE (vocab + merges, the o200k pre-tokenizer regex, harmony special tokens at their
real ids). So token ids in tests are the ids gpt-oss-20b sees, and llama.cpp's converter recognises the
pre-tokenizer as ``gpt-4o``. Rebuilding the merges takes a few seconds, so the tokenizer.json is cached
under ``~/.cache/haruhi-tests/`` keyed by :data:`TOKENIZER_VERSION` (override with $HARUHI_TEST_CACHE).

The model is a randomly initialised ``GptOssForCausalLM`` with the real architecture at tiny widths (what
llama.cpp also accepts): attention sinks and biases, sliding + full layers, YaRN RoPE, a top-2 MoE. Its
expert weights always lie on the MXFP4 grid, so the dense checkpoint and the MXFP4 one (stored like the
original openai/gpt-oss-20b: ``*_blocks`` / ``*_scales``) hold exactly the same model for a seed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from haruhi_tui.core import harmony

#: Bump when the tokenizer build changes: the cached tokenizer.json is keyed by it.
TOKENIZER_VERSION = "o200k_harmony-1"
VOCAB_SIZE = 201088
N_REGULAR_TOKENS = 199998  # o200k_base ranks 0..199997; specials fill 199998..201087

#: The o200k pre-tokenizer (the regex tiktoken's o200k_base splits text with, alternatives joined by ``|``).
O200K_PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])

#: Tiny gpt-oss shape (real architecture; llama.cpp loads it). Expert intermediate 64 by default, 256 for K-quants.
TINY_SHAPE = dict(
    hidden_size=64,
    head_dim=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    layer_types=["sliding_attention", "full_attention"],
    num_local_experts=4,
    num_experts_per_tok=2,
    sliding_window=128,
)
EOS_IDS = [harmony.SPECIAL_TOKEN_IDS[t] for t in (harmony.RETURN, harmony.ENDOFTEXT, harmony.CALL)]
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
MXFP4_BLOCK = 32


def cache_root() -> Path:
    return Path(os.environ.get("HARUHI_TEST_CACHE") or Path.home() / ".cache" / "haruhi-tests")


# -- tokenizer ------------------------------------------------------------------------------------

def special_tokens() -> dict[int, str]:
    """Every harmony special token by id: the named ones from :mod:`haruhi_tui.core.harmony`, reserved ones between."""
    named = {i: t for t, i in harmony.SPECIAL_TOKEN_IDS.items()}
    return {i: named.get(i, f"<|reserved_{i}|>") for i in range(N_REGULAR_TOKENS, VOCAB_SIZE)}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as a printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair BPE merges last to make ``token``: run BPE on its bytes with only lower ranks allowed."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {rank} ({token!r}) cannot be built from lower-ranked tokens")
    return parts[0], parts[1]


def build_harmony_tokenizer_json(path: Path) -> Path:
    """Rebuild o200k_harmony from quicktok's ranks as a HF ``tokenizers`` tokenizer.json (a few seconds)."""
    import quicktok
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    enc = quicktok.get_encoding("o200k_harmony")
    tokens = [enc.decode_single_token_bytes(i) for i in range(N_REGULAR_TOKENS)]
    ranks = {tok: i for i, tok in enumerate(tokens)}
    byte_char = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    vocab = {to_str(tok): i for i, tok in enumerate(tokens)}
    merges = [tuple(map(to_str, _merge_of(tok, r, ranks))) for r, tok in enumerate(tokens) if len(tok) > 1]
    # ignore_merges: a pre-token that is itself in the vocabulary is one token, as in tiktoken.
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for _, t in sorted(special_tokens().items())])
    for i, t in special_tokens().items():
        assert tokenizer.token_to_id(t) == i, (t, tokenizer.token_to_id(t), i)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tokenizer.", suffix=".json", dir=path.parent)
    os.close(fd)
    try:
        tokenizer.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def harmony_tokenizer_json() -> Path:
    """The cached tokenizer.json (built on first use; concurrent builders race harmlessly via rename)."""
    path = cache_root() / TOKENIZER_VERSION / "tokenizer.json"
    if not path.is_file():
        build_harmony_tokenizer_json(path)
    return path


def save_harmony_tokenizer(out_dir: str | os.PathLike) -> Path:
    """Write tokenizer.json + tokenizer_config.json (with our harmony chat template) into ``out_dir``."""
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(harmony_tokenizer_json()),
        bos_token=harmony.STARTOFTEXT,
        eos_token=harmony.RETURN,
        pad_token=harmony.ENDOFTEXT,
        model_max_length=131072,
        chat_template=harmony.CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(out)
    # Also carry the template inside tokenizer_config.json, under the class name every transformers
    # version knows, as the real gpt-oss checkpoints do (older tools read only this file).
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=harmony.CHAT_TEMPLATE)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


# -- MXFP4 ----------------------------------------------------------------------------------------

def mxfp4_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize an HF expert weight ``[experts, in, out]`` to the original gpt-oss layout.

    Returns ``blocks`` uint8 ``[experts, out, in/32, 16]`` (two E2M1 codes a byte, the even element in the
    low nibble) and ``scales`` uint8 ``[experts, out, in/32]`` (E8M0: 2**(s-127)), blocks running along the
    input dimension. The shared exponent is the OCP MX one, floor(log2(amax)) - 2; values are rounded to the
    nearest FP4 value and clamped to ±6.
    """
    w = weight.detach().float().transpose(1, 2).contiguous()  # [E, out, in]
    experts, rows, cols = w.shape
    if cols % MXFP4_BLOCK:
        raise ValueError(f"the input dimension ({cols}) must be a multiple of {MXFP4_BLOCK} for MXFP4")
    w = w.reshape(experts, rows, cols // MXFP4_BLOCK, MXFP4_BLOCK)
    amax = w.abs().amax(dim=-1)
    exponent = torch.where(amax > 0, torch.floor(torch.log2(amax.clamp_min(2.0 ** -126))) - 2,
                           torch.full_like(amax, -127.0))
    exponent = exponent.clamp(-127, 127)
    scaled = w / torch.exp2(exponent).unsqueeze(-1)
    magnitudes = torch.tensor(FP4_VALUES[:8])
    nearest = (scaled.abs().clamp(max=6.0).unsqueeze(-1) - magnitudes).abs().argmin(dim=-1)
    codes = (nearest | ((scaled < 0) & (nearest > 0)).to(torch.int64) << 3).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    scales = (exponent + 127).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


def mxfp4_dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`mxfp4_quantize`: back to the HF ``[experts, in, out]`` layout."""
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    lo, hi = lut[(blocks & 0x0F).long()], lut[(blocks >> 4).long()]
    values = torch.stack((lo, hi), dim=-1).flatten(-2)  # [E, out, G, 32]
    values = values * torch.exp2(scales.float() - 127).unsqueeze(-1)
    experts, rows = values.shape[:2]
    return values.reshape(experts, rows, -1).transpose(1, 2).contiguous().to(dtype)


# -- model ----------------------------------------------------------------------------------------

def tiny_gpt_oss_config(intermediate_size: int = 64):
    from transformers import GptOssConfig

    return GptOssConfig(
        **TINY_SHAPE,
        intermediate_size=intermediate_size,
        vocab_size=VOCAB_SIZE,
        attention_bias=True,
        tie_word_embeddings=False,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
        },
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        router_aux_loss_coef=0.9,
        bos_token_id=harmony.SPECIAL_TOKEN_IDS[harmony.STARTOFTEXT],
        eos_token_id=harmony.SPECIAL_TOKEN_IDS[harmony.RETURN],
        pad_token_id=harmony.SPECIAL_TOKEN_IDS[harmony.ENDOFTEXT],
    )


def _init_weights(model, seed: int) -> None:
    """Deterministic weights for a seed: N(0, 0.02) everywhere, norms near 1, an lm_head scaled so
    logits have unit spread (a clear top-1), expert weights snapped to the MXFP4 grid."""
    generator = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if name.endswith("norm.weight"):
                value = 1.0 + 0.1 * noise
            elif name.startswith("lm_head"):
                value = noise * hidden ** -0.5
            else:
                value = noise * 0.02
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                value = mxfp4_dequantize(*mxfp4_quantize(value))
            param.copy_(value.to(param.dtype))


def build_tiny_gpt_oss(
    out_dir: str | os.PathLike,
    *,
    intermediate_size: int = 64,
    mxfp4: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Save a random tiny ``GptOssForCausalLM`` (config, safetensors, generation config, harmony tokenizer).

    With ``mxfp4`` the expert weights are stored as the original openai/gpt-oss-20b stores them
    (``mlp.experts.{gate_up,down}_proj_{blocks,scales}``) and config.json carries
    ``quantization_config: {"quant_method": "mxfp4", ...}``; everything else is ``dtype``.
    """
    from safetensors.torch import load_file, save_file
    from transformers import GenerationConfig, GptOssForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_gpt_oss_config(intermediate_size)
    torch.manual_seed(seed)
    model = GptOssForCausalLM(config).to(torch.float32)
    _init_weights(model, seed)
    model = model.to(dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=EOS_IDS, pad_token_id=config.pad_token_id, do_sample=True,
    )
    model.save_pretrained(out)
    if mxfp4:
        weights_file = out / "model.safetensors"
        state = load_file(weights_file)
        for name in [n for n in state if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
            blocks, scales = mxfp4_quantize(state.pop(name))
            state[f"{name}_blocks"], state[f"{name}_scales"] = blocks, scales
        save_file(dict(sorted(state.items())), weights_file, metadata={"format": "pt"})
        config_file = out / "config.json"
        data = json.loads(config_file.read_text(encoding="utf-8"))
        data["quantization_config"] = {
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
        }
        config_file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    save_harmony_tokenizer(out)
    return out


def copy_checkpoint(src: Path, dst: Path) -> Path:
    """A private copy of a fixture checkpoint, for a test that must modify it."""
    shutil.copytree(src, dst)
    return dst
