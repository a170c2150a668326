"""Read a Hugging Face checkpoint one tensor (or one slice of rows) at a time.

Shards are read by byte range with ``os.pread`` rather than memory-mapped: pages of a mapped shard
count toward the process's resident memory until it is unmapped, so mapping a 13 GB checkpoint
would make the converter look (and, under memory pressure, act) 13 GB large. Reading ranges keeps
the resident set at the size of the slice in hand. The safetensors layout is simple and public:
an 8-byte little-endian header length, a JSON header (dtype, shape, data offsets), then the data.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import read_json
from haruhi_tui.core.safetensors_header import read_header

#: The safetensors dtypes haruhi-convert reads, as torch dtypes (sizes and the header check:
#: :mod:`haruhi_tui.core.safetensors_header`).
TORCH_DTYPE = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset of the data in ``path``
    nbytes: int

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else self.nbytes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor descriptions of one ``.safetensors`` file, checked against the file's size."""
    tensors: dict[str, TensorInfo] = {}
    for name, entry in read_header(path).items():
        if entry.dtype not in TORCH_DTYPE:
            raise HaruhiError(f"{path}: tensor {name} has dtype {entry.dtype}, which haruhi-convert cannot read")
        tensors[name] = TensorInfo(name, entry.dtype, entry.shape, path, entry.offset, entry.nbytes)
    return tensors


def _pread_exact(fd: int, nbytes: int, offset: int, path: Path) -> bytearray:
    buf = bytearray(nbytes)
    view = memoryview(buf)
    done = 0
    while done < nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise HaruhiError(f"{path} ended early while reading; the file is truncated, re-download it")
        done += got
    return buf


class SafetensorsDir:
    """All tensors of the ``*.safetensors`` files of one directory (a model or an adapter)."""

    def __init__(self, directory: Path, files: list[Path]) -> None:
        self.directory = directory
        self.tensors: dict[str, TensorInfo] = {}
        for path in files:
            for name, info in read_safetensors_header(path).items():
                self.tensors[name] = info
        self._fds: dict[Path, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise HaruhiError(f"cannot read {path}: {exc.strerror}") from exc
            self._fds[path] = fd
        return fd

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` (along the first dimension) of a tensor, in its stored dtype."""
        info = self.tensors[name]
        rows = info.shape[0] if info.shape else 1
        stop = rows if stop is None else min(stop, rows)
        if not info.shape:
            start, stop = 0, 1
        row_bytes = info.nbytes // rows if rows else 0
        buf = _pread_exact(self._fd(info.path), (stop - start) * row_bytes, info.offset + start * row_bytes, info.path)
        shape = ((stop - start),) + info.shape[1:] if info.shape else ()
        if not buf:
            return torch.empty(shape, dtype=TORCH_DTYPE[info.dtype])
        return torch.frombuffer(buf, dtype=TORCH_DTYPE[info.dtype]).reshape(shape)

    def read_f32(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        t = self.read(name, start, stop)
        return t if t.dtype == torch.float32 else t.float()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def load_json(path: Path, what: str) -> dict[str, Any]:
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise HaruhiError(f"{path} should hold a JSON object")
    return data


class Checkpoint(SafetensorsDir):
    """A Hugging Face model directory: ``config.json``, safetensors shards, tokenizer files."""

    def __init__(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        if not directory.exists():
            raise HaruhiError(f"base model folder not found: {directory}")
        if not directory.is_dir():
            raise HaruhiError("--base must be a Hugging Face model folder (config.json + *.safetensors), "
                              f"got a file: {directory}")
        config = load_json(directory / "config.json", "config.json of the base model")
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = load_json(index, "safetensors index").get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise HaruhiError(f"{index} has no valid weight_map (tensor name -> shard file); re-download the model")
            files = sorted({directory / f for f in weight_map.values()})
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise HaruhiError(f"shard {missing[0].name} listed in {index.name} is missing from {directory}; "
                                  "re-download the model")
        else:
            files = sorted(directory.glob("*.safetensors"))
        if not files:
            if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
                raise HaruhiError(f"{directory} has PyTorch .bin weights only; re-save the model with safetensors "
                                  "(save_pretrained(safe_serialization=True))")
            raise HaruhiError(f"no *.safetensors weights in {directory}")
        super().__init__(directory, files)
        self.config = config
        text = config.get("text_config")
        self.hparams: dict[str, Any] = {**config, **text} if isinstance(text, dict) else dict(config)

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else str(self.config.get("model_type", "unknown"))

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
