"""GGUF -> Hugging Face checkpoint: dequantize a GGUF (the bundled Gemma, or any GGUF transformers can read)
into config, safetensors and a tokenizer, so it can be fine-tuned. Uses transformers' own GGUF loader for the
weights; the tokenizer of a SentencePiece GGUF is rebuilt so it tokenizes exactly like llama.cpp does."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from gguf import TokenType

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import make_public, read_json, remove_stale_temps, temp_dir, write_json
from haruhi_tui.core.gguf_header import GGUFHeader
from haruhi_tui.core.progress import Progress, report

from .local_models import read_local_model

_TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
#: Token types llama.cpp matches as whole pieces before BPE runs.
_ADDED_TYPES = (TokenType.UNKNOWN, TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNUSED)


def spm_tokenizer_from_gguf(gguf_path: str | os.PathLike):
    """A HF fast tokenizer that tokenizes exactly as llama.cpp does a SentencePiece-BPE GGUF (``llama`` model).

    transformers turns such GGUFs (Gemma's) into a Unigram tokenizer that splits text differently from
    llama.cpp (" Hello world" becomes six pieces instead of two), so a model fine-tuned on its ids would
    be trained on token sequences it never sees in chat. SentencePiece BPE merges the adjacent pair whose
    joined piece scores highest; a BPE whose merges are ordered by that score does the same. Control and
    unused tokens are special; user-defined ones (Gemma's runs of newlines and spaces) match raw text
    first, as in llama.cpp. BOS/EOS are added as the GGUF says.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    header = GGUFHeader(gguf_path, keep_arrays=_TOKENIZER_ARRAYS)
    meta = header.metadata
    if meta.get("tokenizer.ggml.model") != "llama":
        raise ValueError("not a SentencePiece (llama) GGUF tokenizer")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]  # type: ignore[assignment]
    scores: list[float] = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)  # type: ignore[assignment]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens)  # type: ignore[assignment]
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    mergeable = {tok for tok, kind in zip(tokens, types) if kind == TokenType.NORMAL}
    ranked = []
    for i, tok in enumerate(tokens):
        if types[i] != TokenType.NORMAL or len(tok) < 2:
            continue
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            if left in mergeable and right in mergeable:
                ranked.append((-scores[i], i, vocab[left], left, right))
    ranked.sort()
    merges = [(left, right) for _, _, _, left, right in ranked]

    def token_id(key: str) -> int | None:
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        return int(value) if isinstance(value, int) and 0 <= value < len(tokens) else None

    unk = token_id("unknown")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=tokens[unk] if unk is not None else None,
                                     byte_fallback=True, fuse_unk=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if meta.get("tokenizer.ggml.add_space_prefix", False):
        steps.insert(0, normalizers.Prepend("\u2581"))
        decode.append(decoders.Strip(" ", 1, 0))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence(decode)
    tokenizer.add_tokens([AddedToken(tokens[i], special=types[i] != TokenType.USER_DEFINED, normalized=False)
                          for i in range(len(tokens)) if types[i] in _ADDED_TYPES])
    bos, eos, pad = token_id("bos"), token_id("eos"), token_id("padding")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    single = ([f"{tokens[bos]}:0"] if add_bos else []) + ["$A:0"] + ([f"{tokens[eos]}:0"] if add_eos else [])
    pair = single + ([f"{tokens[bos]}:1"] if add_bos else []) + ["$B:1"] + ([f"{tokens[eos]}:1"] if add_eos else [])
    specials = [(tokens[i], i) for i in {bos, eos}
                if i is not None and ((i == bos and add_bos) or (i == eos and add_eos))]
    tokenizer.post_processor = processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair),
                                                             special_tokens=specials)

    def name(i: int | None) -> str | None:
        return tokens[i] if i is not None else None

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=name(bos), eos_token=name(eos), unk_token=name(unk),
        pad_token=name(pad), add_bos_token=add_bos, add_eos_token=add_eos, clean_up_tokenization_spaces=False,
        model_max_length=int(meta.get(f"{meta.get('general.architecture')}.context_length", 0) or 0) or 131072,
    )


def _portable_tokenizer_config(folder: Path) -> None:
    """Load tokenizer.json as written (every transformers version knows PreTrainedTokenizerFast; a model-specific
    class such as GemmaTokenizer would rebuild the pipeline and tokenize differently)."""
    config_file = folder / "tokenizer_config.json"
    config = read_json(config_file, "tokenizer config")
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json(config_file, config)


def gguf_to_hf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Dequantize a GGUF into an HF checkpoint (config, safetensors, tokenizer, generation config).

    Uses transformers' own GGUF loader (``from_pretrained(..., gguf_file=...)``), so weights are exactly
    the GGUF's dequantized values (``float32`` keeps them exact; ``bfloat16`` halves the size). If the
    GGUF asks for a BOS token (``tokenizer.ggml.add_bos_token``, as Gemma does) the saved tokenizer adds it
    itself, so ``tokenizer(text)`` gives the ids llama.cpp feeds the model. Written to a temp folder and
    renamed: an interrupted conversion leaves nothing behind.
    """
    source = Path(gguf_path).expanduser()
    out = Path(out_dir).expanduser()
    info = read_local_model(source)
    if not source.is_file():
        raise HaruhiError(f"GGUF not found: {source}")
    if info.broken:
        raise HaruhiError(f"{source.name} cannot be converted: {info.broken}")
    if info.parts > 1:
        raise HaruhiError(f"{source.name} is a split GGUF: merge it first (llama-gguf-split --merge) "
                          "and convert the result")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HaruhiError(f"{out} already exists and is not empty: choose another folder or pass --overwrite")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise HaruhiError(f"dtype is float32, bfloat16 or float16, not {dtype!r}")
    if info.architecture not in GGUF_CONFIG_MAPPING:
        raise HaruhiError(
            f"transformers cannot read {info.architecture} GGUF files "
            f"(it reads: {', '.join(sorted(GGUF_CONFIG_MAPPING))}); "
            "download the model's original checkpoint instead")
    header = GGUFHeader(source)
    wants_bos = bool(header.metadata.get("tokenizer.ggml.add_bos_token", False))
    template = header.metadata.get("tokenizer.chat_template")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # what a killed conversion left
    staging = temp_dir(out)
    try:
        report(progress, 0.05, f"reading the tokenizer of {source.name}")
        if header.metadata.get("tokenizer.ggml.model") == "llama":
            tokenizer = spm_tokenizer_from_gguf(source)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
            if wants_bos and tokenizer.bos_token_id is not None:
                tokenizer.add_bos_token = True
        if isinstance(template, str) and template.strip():
            tokenizer.chat_template = template
        report(progress, 0.35, f"dequantizing {source.name} ({info.quantization or 'GGUF'}) to {dtype}")
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch_dtype)
        # The weights are plain tensors now: the saved checkpoint must not claim to be GGUF-quantized.
        with contextlib.suppress(AttributeError):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config.name_or_path = info.name
        if wants_bos and model.generation_config is not None:
            model.generation_config.bos_token_id = tokenizer.bos_token_id
        report(progress, 0.8, f"writing the checkpoint to {out}")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _portable_tokenizer_config(staging)
        make_public(staging)  # safetensors writes 0600 through a temp file of its own
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except OSError as exc:
        if exc.errno == 28:
            raise HaruhiError(f"disk full while writing the checkpoint to {out.parent}: free some space") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(progress, 1.0, f"saved {out}")
    return out
