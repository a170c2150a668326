"""The generator for a model path: a GGUF file runs on llama.cpp, a Hugging Face folder on transformers.

A wrong path is a one-line error before any engine starts; torch or llama.cpp is imported only for the
engine the model needs.
"""

from __future__ import annotations

import os
from pathlib import Path

from haruhi_tui.core.errors import HaruhiError

from .gguf import GGUFGenerator
from .hf import HFGenerator


def load_generator(model: str | os.PathLike, adapter: str | os.PathLike | None = None, *, device: str | None = None,
                   dtype: str | None = None, batch_size: int | None = None, parallel: int | None = None,
                   n_gpu_layers: int = -1, attn: str = "auto", share_prefixes: bool = True, cuda_graphs: bool = True,
                   engine: str = "auto"):
    """A GGUF file -> llama.cpp; a model folder -> transformers (+ the LoRA ``adapter``). ``share_prefixes``:
    prompts that start alike reuse the computed start (both engines); ``cuda_graphs``: decode steps replayed
    from CUDA graphs (transformers on a GPU); ``engine``: the transformers engine (auto, continuous, batched)."""
    path = Path(model)
    if not path.exists():
        raise HaruhiError(f"model not found: {path} (pass a .gguf file or a Hugging Face model folder)")
    if path.is_file():
        if adapter:
            raise HaruhiError("--adapter is for Hugging Face model folders; for a GGUF merge the adapter first "
                              "with haruhi-convert")
        with path.open("rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise HaruhiError(f"{path} is not a GGUF file (pass a .gguf file or a Hugging Face model folder)")
        import llama_cpp

        default_parallel = 16 if (n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()) else 4
        return GGUFGenerator.load(path, parallel=parallel or batch_size or default_parallel,
                                  n_gpu_layers=n_gpu_layers, reuse_prefix=share_prefixes)
    return HFGenerator.load(path, adapter, device=device, dtype=dtype, attn=attn, batch_size=batch_size,
                            share_prefixes=share_prefixes, cuda_graphs=cuda_graphs, engine=engine)

