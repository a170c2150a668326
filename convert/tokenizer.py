"""The tokenizer part of a GGUF, read from the Hugging Face ``tokenizer.json`` / ``tokenizer_config.json``.

Two tokenizer models cover our architectures (llama.cpp ``src/llama-vocab.cpp``):

* ``gpt2`` (byte-level BPE: gpt-oss's o200k_harmony, Llama 3, Qwen): tokens in the byte-to-unicode
  alphabet, merges by rank, a ``tokenizer.ggml.pre`` naming the pre-tokenizer regex llama.cpp must
  use (found, as llama.cpp's converter does, by hashing the ids of a probe text);
* ``llama`` (SentencePiece: Gemma 3): tokens with scores that order the merges. A tokenizer.json
  converted from SentencePiece keeps the pieces in id order, and SentencePiece scores normal pieces
  by that order, so score = -(id - first normal id) reproduces them; bytes score 0, the rest -1000.

Token types: added tokens marked special (or looking like ``<|...|>``) are CONTROL, other added
tokens USER_DEFINED, ``<0xNN>`` pieces BYTE. Special ids, add-BOS/EOS flags and the chat template come
through ``gguf.SpecialVocab`` (the same reader llama.cpp's converter uses).
"""

from __future__ import annotations

import json
import re
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf
from gguf import TokenType

from haruhi_tui.core.errors import HaruhiError

# the probe text and known hashes of llama.cpp's convert_hf_to_gguf.py (get_vocab_base_pre)
_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_KNOWN_PRE = {
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
}
_SPECIAL_LOOK = re.compile(r"^(<\|.*\|>|<unused\d+>|<pad>|<mask>|<start_of_turn>|<end_of_turn>)$")
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HaruhiError(f"cannot read the tokenizer {path}: {exc}") from exc


def _pre_tokenizer_name(tokenizer_file: Path, default: str) -> str:
    try:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(tokenizer_file)).encode(_PROBE).ids
    except Exception:  # an unusual tokenizer.json: fall back to the architecture's own pre-tokenizer
        return default
    return _KNOWN_PRE.get(sha256(str(ids).encode()).hexdigest(), default)


class TokenizerInfo:
    """Everything the GGUF needs about the tokenizer, and the chat template."""

    def __init__(self, directory: Path, vocab_kind: str, n_vocab: int, default_pre: str,
                 force_add_bos: bool | None = None) -> None:
        self.directory = directory
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise HaruhiError(f"tokenizer.json not found in {directory}; "
                              "copy the tokenizer files of the base model next to its weights")
        data = _read_json(path)
        model = data.get("model") or {}
        added = {int(t["id"]): t for t in data.get("added_tokens", [])}
        vocab = model.get("vocab")
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            pieces = {i: p for i, (p, _) in enumerate(vocab)}
            scores_in = {i: float(s) for i, (_, s) in enumerate(vocab)}
        elif isinstance(vocab, dict):
            pieces = {int(i): p for p, i in vocab.items()}
            scores_in = {}
        else:
            raise HaruhiError(f"{path} has no vocabulary; it is not a Hugging Face fast tokenizer file")
        for i, tok in added.items():
            pieces[i] = tok["content"]
        top = max(pieces) + 1
        if top > n_vocab:
            raise HaruhiError(f"the tokenizer has {top} tokens but the model's embedding has {n_vocab} rows; "
                              "tokenizer and weights do not belong together")
        self.kind = vocab_kind
        self.tokens: list[str] = []
        self.types: list[int] = []
        self.scores: list[float] = []
        first_normal = None
        for i in range(n_vocab):
            piece = pieces.get(i)
            if piece is None:
                self.tokens.append(f"[PAD{i}]")
                self.types.append(TokenType.UNUSED)
                self.scores.append(-1000.0)
                continue
            if i in added:
                special = bool(added[i].get("special")) or bool(_SPECIAL_LOOK.match(piece))
                ttype = TokenType.CONTROL if special else TokenType.USER_DEFINED
                if ttype == TokenType.USER_DEFINED and vocab_kind == "spm":
                    piece = piece.replace("\u2581", " ")
            elif vocab_kind == "spm" and _BYTE_PIECE.match(piece):
                ttype = TokenType.BYTE
            else:
                ttype = TokenType.NORMAL
            if vocab_kind == "spm":
                if i in scores_in and ttype == TokenType.NORMAL:
                    score = scores_in[i]
                elif ttype == TokenType.NORMAL:
                    first_normal = i if first_normal is None else first_normal
                    score = -float(i - first_normal)
                else:
                    score = 0.0 if ttype == TokenType.BYTE else -1000.0
                self.scores.append(score)
            self.tokens.append(piece)
            self.types.append(ttype)
        self.pre = _pre_tokenizer_name(path, default_pre) if vocab_kind == "bpe" else "default"
        normalizer = json.dumps(data.get("normalizer") or {})
        pre_tokenizer = json.dumps(data.get("pre_tokenizer") or {})
        self.add_space_prefix = '"Prepend"' in normalizer or '"prepend_scheme": "always"' in pre_tokenizer
        self.special = gguf.SpecialVocab(directory, load_merges=vocab_kind == "bpe", n_vocab=n_vocab)
        if vocab_kind == "bpe" and not self.special.merges:
            raise HaruhiError(f"{path} has no BPE merges; the tokenizer file is incomplete")
        if force_add_bos is not None:
            self.special.add_special_token["bos"] = force_add_bos
        self.chat_template = self.special.chat_template

    def add_to(self, gw: gguf.GGUFWriter) -> None:
        gw.add_tokenizer_model("gpt2" if self.kind == "bpe" else "llama")
        gw.add_tokenizer_pre(self.pre)
        gw.add_token_list(self.tokens)
        gw.add_token_types(self.types)
        if self.kind == "spm":
            gw.add_token_scores(self.scores)
            gw.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(gw, quiet=True)

    def token_id(self, text: str) -> int | None:
        try:
            return self.tokens.index(text)
        except ValueError:
            return None
