"""A quick look inside a GGUF: scalar metadata, the tensor table, one tensor's bytes.

``gguf.GGUFReader`` builds a Python object per array element, which takes tens of seconds for a
200k-token vocabulary; this reader skips arrays it is not asked for and reads tensors by offset.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order (outermost first)
    offset: int  # absolute
    nbytes: int


class GGUFIndex:
    def __init__(self, path: str | Path, arrays: tuple[str, ...] = ()) -> None:
        """``arrays``: keys of array values to decode (others are skipped)."""
        self.path = Path(path)
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorEntry] = {}
        with self.path.open("rb") as fh:
            r = _Buffered(fh)
            if r.unpack("<I") != 0x46554747:
                raise ValueError(f"{self.path} is not a GGUF file")
            self.version = r.unpack("<I")
            n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
            for _ in range(n_kv):
                key = r.string()
                vtype = r.unpack("<I")
                v = self._value(r, vtype, key in arrays or vtype != GGUFValueType.ARRAY)
                if v is not None:
                    self.metadata[key] = v
            infos = []
            for _ in range(n_tensors):
                name = r.string()
                dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
                qtype = GGMLQuantizationType(r.unpack("<I"))
                infos.append((name, qtype, tuple(reversed(dims)), r.unpack("<Q")))
            align = int(self.metadata.get("general.alignment", 32))
            data_start = (r.tell() + align - 1) // align * align
        for name, qtype, shape, offset in infos:
            block, size = GGML_QUANT_SIZES[qtype]
            self.tensors[name] = TensorEntry(name, qtype, shape, data_start + offset, math.prod(shape) // block * size)

    @staticmethod
    def _value(r: "_Buffered", vtype: int, keep: bool) -> Any:
        if vtype == GGUFValueType.STRING:
            return r.string()
        if vtype != GGUFValueType.ARRAY:
            return r.unpack(_SCALAR[GGUFValueType(vtype)])
        itype, count = r.unpack("<I"), r.unpack("<Q")
        if itype == GGUFValueType.STRING:
            items = [r.string() if keep else r.skip(r.unpack("<Q")) for _ in range(count)]
            return items if keep else None
        fmt = _SCALAR[GGUFValueType(itype)]
        data = r.take(struct.calcsize(fmt) * count)
        return np.frombuffer(data, dtype=np.dtype(fmt)).tolist() if keep else None

    def raw(self, name: str) -> np.ndarray:
        """A tensor's bytes as stored (uint8; decode with ``gguf.quants.dequantize`` or a dtype view)."""
        t = self.tensors[name]
        with self.path.open("rb") as fh:
            fh.seek(t.offset)
            return np.frombuffer(fh.read(t.nbytes), dtype=np.uint8)

    def values(self, name: str) -> np.ndarray:
        """A tensor as float32 in numpy order (dequantized if needed)."""
        import gguf

        t = self.tensors[name]
        raw = self.raw(name)
        if t.qtype == GGMLQuantizationType.F32:
            return raw.view(np.float32).reshape(t.shape)
        if t.qtype == GGMLQuantizationType.F16:
            return raw.view(np.float16).astype(np.float32).reshape(t.shape)
        rows = raw.reshape(*t.shape[:-1], -1)
        return gguf.quants.dequantize(rows, t.qtype).astype(np.float32).reshape(t.shape)

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
        return counts


class _Buffered:
    """Sequential little-endian reads over a file, in large chunks."""

    def __init__(self, fh) -> None:
        self.fh, self.buf, self.pos, self.base = fh, b"", 0, 0

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            rest = self.buf[self.pos:]
            self.base += self.pos
            self.buf = rest + self.fh.read(max(n - len(rest), 1 << 22))
            self.pos = 0
            if n > len(self.buf):
                raise ValueError("GGUF file ends early")

    def take(self, n: int) -> bytes:
        self._need(n)
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        self.take(n)

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        self._need(size)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", errors="replace")

    def tell(self) -> int:
        return self.base + self.pos
