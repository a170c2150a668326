"""Reading a GGUF's header (metadata and tensor table) without loading the model: the one reader the model
picker, the engine's checks, the GGUF -> HF conversion and the converter all use.

``gguf.GGUFReader`` builds numpy objects for every array element (seconds for a 262k-token vocabulary on two
cores), far too slow for a model picker; this reader skips the arrays it is not asked for and reads a
tensor's bytes by offset only when asked. Value and tensor types come from the ``gguf`` package's own tables.
Split models (``name-00001-of-00003.gguf``) are read part by part (:func:`read_parts`).
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Iterable, TypeVar

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFReader, GGUFValueType

from .errors import HaruhiError
from .fsutil import human_bytes

#: numpy dtype of each scalar value type, from gguf-py's reader (little-endian, as GGUF stores them).
_SCALAR_DTYPES = {vtype: np.dtype(kind).newbyteorder("<") for vtype, kind in GGUFReader.gguf_scalar_to_np.items()}
_READ_CHUNK = 1 << 22
SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")

P = TypeVar("P", bound=PurePath)


class GGUFError(HaruhiError):
    """A file that is not a readable, complete GGUF; the message says why."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the table: ``shape`` in numpy order (outermost first), ``offset`` from the file's start.
    ``type`` is None for a type newer than our gguf-py (it cannot be sized; llama.cpp will judge it)."""

    name: str
    shape: tuple[int, ...]
    type: GGMLQuantizationType | None
    offset: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int | None:
        if self.type is None:
            return None
        block, type_size = GGML_QUANT_SIZES[self.type]
        return self.n_elements // block * type_size


class GGUFHeader:
    """The header of one GGUF file: scalar and string ``metadata`` (arrays only when named in ``keep_arrays``),
    the ``tensors`` table by name, and where the tensor data starts. :class:`GGUFError` for anything else."""

    def __init__(self, path: str | os.PathLike, keep_arrays: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        keep = set(keep_arrays)
        with self.path.open("rb") as fh:
            self.file_size = os.fstat(fh.fileno()).st_size
            r = _Reader(fh)
            if r.unpack("<I") != GGUF_MAGIC:
                raise GGUFError("not a GGUF file (no GGUF magic at the start)")
            self.version = r.unpack("<I")
            if self.version not in (2, 3):
                raise GGUFError(f"GGUF version {self.version} is not supported")
            n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
            if n_tensors > 1 << 24 or n_kv > 1 << 24:
                raise GGUFError("the header is corrupt (absurd tensor or key count)")
            for _ in range(n_kv):
                key = r.string()
                value = self._value(r, key, r.unpack("<I"), keep)
                if value is not None:
                    self.metadata[key] = value
            table = []
            for _ in range(n_tensors):
                name = r.string()
                n_dims = r.unpack("<I")
                if n_dims > 8:
                    raise GGUFError("the header is corrupt (tensor with more than 8 dimensions)")
                dims = tuple(r.unpack("<Q") for _ in range(n_dims))
                table.append((name, tuple(reversed(dims)), r.unpack("<I"), r.unpack("<Q")))
            alignment = self.metadata.get("general.alignment") or GGUF_DEFAULT_ALIGNMENT
            if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 1:
                raise GGUFError(f"the header is corrupt (general.alignment is {alignment!r})")
            self.data_start = r.tell() + (-r.tell() % alignment)
        for name, shape, type_id, offset in table:
            self.tensors[name] = TensorInfo(name, shape, _known_type(type_id), self.data_start + offset)

    @staticmethod
    def _value(r: _Reader, key: str, vtype: int, keep: set[str]) -> Any:
        if vtype == GGUFValueType.STRING:
            return r.string()
        if vtype in _SCALAR_DTYPES:
            return r.scalar(_SCALAR_DTYPES[vtype])
        if vtype != GGUFValueType.ARRAY:
            raise GGUFError(f"unknown GGUF value type {vtype} (key {key})")
        item_type, count = r.unpack("<I"), r.unpack("<Q")
        if item_type in _SCALAR_DTYPES:
            dtype = _SCALAR_DTYPES[item_type]
            if key not in keep:
                r.skip(dtype.itemsize * count)
                return None
            return np.frombuffer(r.take(dtype.itemsize * count), dtype=dtype).tolist()
        if item_type == GGUFValueType.STRING:
            if key not in keep:
                for _ in range(count):
                    r.skip(r.unpack("<Q"))
                return None
            return [r.string() for _ in range(count)]
        items = [GGUFHeader._value(r, key, item_type, keep) for _ in range(count)]  # arrays of arrays
        return items if key in keep else None

    def parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())

    def required_size(self) -> int:
        """Bytes the file must have to hold all its tensor data (a shorter file was cut off)."""
        ends = [t.offset + t.nbytes for t in self.tensors.values() if t.nbytes is not None]
        return max([self.data_start, *ends])

    def type_counts(self) -> dict[str, int]:
        """How many tensors of each type (``{"Q4_K": 120, "F32": 40}``)."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            name = t.type.name if t.type is not None else "unknown"
            counts[name] = counts.get(name, 0) + 1
        return counts

    def raw(self, name: str) -> np.ndarray:
        """A tensor's bytes as stored (uint8; decode with ``gguf.quants.dequantize`` or a dtype view)."""
        t = self.tensors[name]
        if t.nbytes is None:
            raise GGUFError(f"tensor {name} has a type this gguf package does not know")
        with self.path.open("rb") as fh:
            fh.seek(t.offset)
            return np.frombuffer(fh.read(t.nbytes), dtype=np.uint8)

    def values(self, name: str) -> np.ndarray:
        """A tensor as float32 in numpy order (dequantized if needed)."""
        import gguf

        t = self.tensors[name]
        raw = self.raw(name)
        if t.type == GGMLQuantizationType.F32:
            return raw.view(np.float32).reshape(t.shape)
        if t.type == GGMLQuantizationType.F16:
            return raw.view(np.float16).astype(np.float32).reshape(t.shape)
        return gguf.quants.dequantize(raw.reshape(*t.shape[:-1], -1), t.type).astype(np.float32).reshape(t.shape)


def _known_type(type_id: int) -> GGMLQuantizationType | None:
    try:
        return GGMLQuantizationType(type_id)
    except ValueError:
        return None


def split_parts(path: P) -> list[P]:
    """Every part of a split model (``x-00002-of-00003.gguf`` gives parts 1 to 3, in order); ``[path]`` for a
    file that is not split."""
    split = SPLIT_NAME.match(path.name)
    if not split:
        return [path]
    count = int(split["count"])
    return [path.with_name(f"{split['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def is_first_part(name: str) -> bool:
    """Whether a file name is a whole model or the first part of a split one (listed; the others are not)."""
    split = SPLIT_NAME.match(name)
    return not split or int(split["index"]) == 1


def model_stem(path: PurePath) -> str:
    """A model's file name without ``.gguf`` and without a split part's ``-00001-of-00003``."""
    split = SPLIT_NAME.match(path.name)
    return split["stem"] if split else path.stem


def read_parts(path: Path) -> list[GGUFHeader]:
    """The headers of a model file and of its other split parts, checked whole: every part there, readable,
    a GGUF, and long enough for its tensor data. :class:`GGUFError` says what is wrong and what to do."""
    try:
        path.stat()
    except OSError as exc:
        raise GGUFError(f"cannot read the file: {exc.strerror}") from None
    parts = split_parts(path)
    missing = [q.name for q in parts if not q.is_file()] if len(parts) > 1 else []
    if missing:
        raise GGUFError(f"split model is missing {len(missing)} of {len(parts)} parts ({missing[0]}…)")
    try:
        headers = [GGUFHeader(q) for q in parts]
    except PermissionError:
        raise GGUFError("permission denied") from None
    except (GGUFError, OSError) as exc:
        reason = str(exc) if isinstance(exc, GGUFError) else exc.strerror or str(exc)
        raise GGUFError(f"not a usable GGUF: {reason}") from None
    for header in headers:
        need = header.required_size()
        if header.file_size < need:
            raise GGUFError(f"incomplete: {header.path.name} has {human_bytes(header.file_size)} of "
                            f"{human_bytes(need)} (interrupted download? download it again)")
    return headers


class _Reader:
    """Sequential little-endian reads over a file, in large chunks; skips seek past what is not kept."""

    def __init__(self, fh) -> None:
        self.fh, self.buf, self.pos, self.base = fh, b"", 0, 0

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            rest = self.buf[self.pos:]
            self.base += self.pos
            self.buf = rest + self.fh.read(max(n - len(rest), _READ_CHUNK))
            self.pos = 0
            if n > len(self.buf):
                raise GGUFError("the header is cut short (incomplete download?)")

    def take(self, n: int) -> bytes:
        if n > 1 << 31:
            raise GGUFError("the header is corrupt (absurd length)")
        self._need(n)
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        if self.pos + n <= len(self.buf):
            self.pos += n
        else:  # beyond the buffer: seek (a file cut short shows at the next read)
            self.base, self.buf, self.pos = self.base + self.pos + n, b"", 0
            self.fh.seek(self.base)

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        self._need(size)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def scalar(self, dtype: np.dtype) -> Any:
        return np.frombuffer(self.take(dtype.itemsize), dtype=dtype)[0].item()

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 30:
            raise GGUFError("the header is corrupt (absurd string length)")
        return self.take(n).decode("utf-8", errors="replace")

    def tell(self) -> int:
        return self.base + self.pos
