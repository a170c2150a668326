"""What a GGUF model is, read from its header before anything is loaded: architecture, name, prompt style,
size, context, the attention shape that sizes its KV cache. The engine checks a model with it before
llama.cpp sees the file (a damaged or half-downloaded file is a one-line :class:`ModelError`, never a
crash), the model picker lists models with it, and :func:`check_fits` refuses a model this machine cannot hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .gguf_header import GGUFError, model_stem, read_parts
from .memory_fit import kv_cache_bytes, memory_fit
from .prompt_format import Style, detect_style


@dataclass(frozen=True)
class GGUFInfo:
    """A model's header facts (all split parts together; tensors are not touched)."""

    path: Path
    size_bytes: int
    architecture: str
    name: str
    chat_template: str | None
    context_length: int
    block_count: int
    head_count_kv: int
    key_length: int
    value_length: int
    parameters: int = 0
    size_label: str = ""
    quantization: str = ""
    parts: int = 1

    @property
    def style(self) -> Style:
        return detect_style(self.architecture, self.chat_template)

    def kv_cache_bytes(self, n_ctx: int) -> int:
        """f16 K and V for every layer at ``n_ctx`` (an upper bound: sliding-window layers need less)."""
        return kv_cache_bytes(n_ctx, self.block_count, self.head_count_kv, self.key_length, self.value_length)

    @classmethod
    def read(cls, path: Path) -> GGUFInfo:
        """Read and check a model's header; :class:`~.gguf_header.GGUFError` says why it cannot be used."""
        headers = read_parts(path)
        meta = headers[0].metadata
        arch = str(meta.get("general.architecture") or "")
        if not arch:
            raise GGUFError("no general.architecture in the header")

        def num(suffix: str, default: int = 0) -> int:
            value = meta.get(f"{arch}.{suffix}")
            return int(value) if isinstance(value, (int, float)) else default

        heads = num("attention.head_count", 1) or 1
        head_dim = num("embedding_length") // heads if num("embedding_length") else 128
        template = meta.get("tokenizer.chat_template")
        return cls(
            path=path,
            size_bytes=sum(h.file_size for h in headers),
            architecture=arch,
            name=str(meta.get("general.name") or model_stem(path)),
            chat_template=template if isinstance(template, str) and template.strip() else None,
            context_length=num("context_length"),
            block_count=num("block_count"),
            head_count_kv=num("attention.head_count_kv", heads) or heads,
            key_length=num("attention.key_length", head_dim),
            value_length=num("attention.value_length", head_dim),
            parameters=sum(h.parameters() for h in headers),
            size_label=str(meta.get("general.size_label") or ""),
            quantization=_quantization_name(meta.get("general.file_type")),
            parts=len(headers),
        )


def _quantization_name(file_type: object) -> str:
    """``Q4_K_M`` from the header's ``general.file_type`` ("" where it is missing or unknown)."""
    import gguf

    try:
        name = gguf.LlamaFileType(int(file_type)).name  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return name.removeprefix("MOSTLY_").replace("GUESSED", "").strip("_")


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Check a GGUF and read what the engine needs from its header; :class:`ModelError` says what is wrong
    (missing, not a GGUF, cut short, split parts missing) and what to do."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model file not found: {p} (pick another model, or pass --model with a .gguf file)")
    if p.is_dir():
        raise ModelError(f"{p} is a folder: pass the .gguf file inside it")
    try:
        return GGUFInfo.read(p)
    except GGUFError as exc:
        raise ModelError(f"{p.name} cannot be used: {exc}") from None


def detect_model_style(path: str | Path) -> Style:
    """The prompt style of a GGUF (harmony / chat / script) from its architecture and chat template."""
    return read_gguf_info(path).style


def check_fits(info: GGUFInfo, n_ctx: int) -> None:
    """Refuse a model that cannot fit in this machine's memory (weights + KV cache), with what to do."""
    problem = memory_fit(info.size_bytes, info.kv_cache_bytes(n_ctx)).problem(info.path.name, n_ctx)
    if problem:
        raise ModelError(problem)
