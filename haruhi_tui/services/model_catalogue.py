"""A short, curated list of GGUF models worth chatting with: gpt-oss-20b as its main publishers ship it, and
small chat models that run on a CPU. Each entry names its hub repo and file (``haruhi models get ID`` and the
app's download dialog fetch it into the models folder), its size, and whether it fits this machine
(:func:`~haruhi_tui.core.memory_fit.memory_fit`, the rule the engine applies before loading a model).

File names and sizes were checked against the publishers' hub listings (or, where marked ``checked=False``,
taken from other projects that download the same file) in 2026; the hub's own size and hash are what a
download is verified against, so a stale size here only affects the fit estimate.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from haruhi_tui.core.engine import DEFAULT_N_CTX
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import human_bytes
from haruhi_tui.core.memory_fit import MemoryFit, kv_cache_bytes, memory_fit
from haruhi_tui.core.paths import models_dir
from haruhi_tui.core.progress import Progress


@dataclass(frozen=True)
class CatalogueEntry:
    """One downloadable GGUF. ``layers``/``kv_heads``/``head_dim`` size its KV cache before it is downloaded."""

    id: str
    label: str
    repo: str
    file: str
    size_bytes: int
    layers: int
    kv_heads: int
    head_dim: int
    note: str = ""
    checked: bool = True  # file name and size seen on the publisher's own hub listing

    @property
    def source(self) -> str:
        return f"{self.repo}/{self.file}"

    @property
    def size_label(self) -> str:
        return human_bytes(self.size_bytes)

    def fit(self, n_ctx: int = DEFAULT_N_CTX) -> MemoryFit:
        """Weights plus the KV cache of ``n_ctx`` tokens against this machine's memory."""
        return memory_fit(self.size_bytes, kv_cache_bytes(n_ctx, self.layers, self.kv_heads, self.head_dim,
                                                          self.head_dim))

    def local_path(self, folder: Path | None = None) -> Path:
        """Where ``haruhi models get`` puts it (the models folder), whether or not it is there yet."""
        return (folder or models_dir()) / self.file

    def downloaded(self, folder: Path | None = None) -> bool:
        return self.local_path(folder).is_file()


CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry("gpt-oss-20b", "gpt-oss-20b MXFP4 (ggml-org)", "ggml-org/gpt-oss-20b-GGUF",
                   "gpt-oss-20b-mxfp4.gguf", 12_109_566_560, 24, 8, 64,
                   "the base haruhi fine-tunes", checked=False),
    CatalogueEntry("gpt-oss-20b-lmstudio", "gpt-oss-20b MXFP4 (LM Studio)", "lmstudio-community/gpt-oss-20b-GGUF",
                   "gpt-oss-20b-MXFP4.gguf", 12_109_565_632, 24, 8, 64, "same file as gpt-oss-20b",
                   checked=False),
    CatalogueEntry("gpt-oss-20b-unsloth", "gpt-oss-20b Q4_K_M (Unsloth)", "unsloth/gpt-oss-20b-GGUF",
                   "gpt-oss-20b-Q4_K_M.gguf", 11_600_000_000, 24, 8, 64,
                   "experts stay MXFP4"),
    CatalogueEntry("qwen2.5-0.5b", "Qwen2.5 0.5B Instruct Q4_K_M", "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
                   "qwen2.5-0.5b-instruct-q4_k_m.gguf", 491_400_032, 24, 2, 64, "fast on any CPU",
                   checked=False),
    CatalogueEntry("qwen2.5-1.5b", "Qwen2.5 1.5B Instruct Q4_K_M", "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
                   "qwen2.5-1.5b-instruct-q4_k_m.gguf", 1_117_320_736, 28, 2, 128,
                   "better Chinese, still quick", checked=False),
    CatalogueEntry("gemma-3-1b", "Gemma 3 1B it Q4_K_M", "lmstudio-community/gemma-3-1b-it-GGUF",
                   "gemma-3-1b-it-Q4_K_M.gguf", 806_000_000, 26, 1, 256,
                   "big sibling of the bundled model"),
    CatalogueEntry("llama-3.2-1b", "Llama 3.2 1B Instruct Q4_K_M", "bartowski/Llama-3.2-1B-Instruct-GGUF",
                   "Llama-3.2-1B-Instruct-Q4_K_M.gguf", 807_694_464, 16, 8, 64, "English first", checked=False),
    CatalogueEntry("llama-3.2-3b", "Llama 3.2 3B Instruct Q4_K_M", "bartowski/Llama-3.2-3B-Instruct-GGUF",
                   "Llama-3.2-3B-Instruct-Q4_K_M.gguf", 2_019_377_696, 28, 8, 128, "English first",
                   checked=False),
)


def find_entry(model_id: str) -> CatalogueEntry | None:
    """The entry with this id (case-insensitive), or None."""
    wanted = model_id.strip().casefold()
    return next((e for e in CATALOGUE if e.id.casefold() == wanted), None)


def resolve(id_or_repo: str, file: str | None = None) -> tuple[str, str | None, CatalogueEntry | None]:
    """``(repo, file, entry)`` for a catalogue id or a free hub repo id (``owner/name``, file optional).
    Anything else is a one-line error that lists the closest catalogue ids."""
    entry = find_entry(id_or_repo)
    if entry is not None:
        if file and file != entry.file:
            raise HaruhiError(f"{entry.id} is {entry.source}; to fetch another file name the repo instead: "
                              f"haruhi models get {entry.repo} {file}")
        return entry.repo, entry.file, entry
    if id_or_repo.count("/") == 1 and all(id_or_repo.split("/")):
        return id_or_repo, file, None
    close = difflib.get_close_matches(id_or_repo.casefold(), [e.id for e in CATALOGUE], n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise HaruhiError(f"no model {id_or_repo!r} in the catalogue: {hint}pick an id from `haruhi models list "
                      "--catalogue`, or give a hub repo id like owner/name")


def download(id_or_repo: str, file: str | None = None, dest: Path | None = None, *, revision: str = "main",
             progress: Progress | None = None) -> Path:
    """Download a catalogue entry or any hub repo into ``dest`` (default: the models folder); a file already
    complete there is not fetched again."""
    from . import hub

    repo, filename, _ = resolve(id_or_repo, file)
    return hub.download(repo, filename, dest, revision=revision, progress=progress)
