"""Will a model fit this machine? One rule for a GGUF on disk (:func:`~.gguf_info.check_fits`, before llama.cpp
loads it) and for a model not downloaded yet (the model catalogue): its weights plus the KV cache of the
context must fit in the machine's RAM or, where llama.cpp was built for CUDA, in one GPU's memory."""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def kv_cache_bytes(n_ctx: int, layers: int, kv_heads: int, key_length: int, value_length: int) -> int:
    """f16 K and V for every layer at ``n_ctx`` (an upper bound: sliding-window layers need less)."""
    return n_ctx * layers * kv_heads * (key_length + value_length) * 2


def ram_bytes() -> tuple[int, int]:
    """(total, available) memory in bytes, from /proc/meminfo (0, 0 where unknown)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def _llama_cpp_has_cuda() -> bool:
    """Whether the installed llama-cpp-python was built with CUDA (its CUDA backend library is there); the
    package is not imported for this."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return any(lib.glob("*ggml-cuda*"))


@functools.lru_cache(maxsize=1)
def gpu_bytes() -> int:
    """Memory of the largest NVIDIA GPU that llama.cpp can use (0: none, or llama.cpp is a CPU build)."""
    smi = shutil.which("nvidia-smi")
    if smi is None or not _llama_cpp_has_cuda():
        return 0
    try:
        out = subprocess.run([smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
        return max((int(float(v)) * 2**20 for v in out.split()), default=0)
    except (OSError, subprocess.SubprocessError, ValueError):
        return 0


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


@dataclass(frozen=True)
class MemoryFit:
    """What a model needs (weights + KV cache) against what this machine has (0: unknown or none)."""

    weights: int
    kv_cache: int
    ram: int
    gpu: int

    @property
    def need(self) -> int:
        return self.weights + self.kv_cache

    @property
    def where(self) -> str:
        """"GPU" or "RAM" where the model fits (the GPU first), "" where it does not; "RAM" when unknown."""
        if self.gpu and self.need <= self.gpu:
            return "GPU"
        if not self.ram or self.need <= self.ram:
            return "RAM"
        return ""

    @property
    def fits(self) -> bool:
        return bool(self.where)

    def label(self) -> str:
        """A few words for a table: ``yes (RAM)``, ``no: needs 13.1 GiB``."""
        return f"yes ({self.where})" if self.fits else f"no: needs {gib(self.need)}"

    def problem(self, name: str, n_ctx: int) -> str:
        """Why ``name`` cannot be used here and what to do ("" if it fits)."""
        if self.fits:
            return ""
        has = f"this machine has {gib(self.ram)}" + (f" (GPU {gib(self.gpu)})" if self.gpu else "")
        return (f"{name} needs about {gib(self.need)} of memory (weights {gib(self.weights)} + context "
                f"{n_ctx} tokens) but {has}: pick a smaller quantization or a shorter context")


def memory_fit(weights: int, kv_cache: int) -> MemoryFit:
    """How a model of ``weights`` bytes with a ``kv_cache``-byte context fits this machine."""
    return MemoryFit(weights, kv_cache, ram_bytes()[0], gpu_bytes())
