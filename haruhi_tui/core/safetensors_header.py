"""A ``.safetensors`` file's header, checked against the file: the one check the converter (before it reads
weights) and the trainer (before it trusts a checkpoint or an adapter) both use.

The layout is simple and public: an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and data offsets, plus an optional ``__metadata__``), then the data, which the offsets cover exactly. A
file cut short, padded, or with a damaged header is a :class:`HaruhiError` naming it; no weights are read.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import HaruhiError

#: Bytes per element of the dtypes safetensors writes (F4/F6 and other packed types are not sized here).
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
            "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the header: ``offset`` is from the file's start, ``nbytes`` its data's length."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def read_header(path: str | os.PathLike, advice: str = "re-download or re-save it") -> dict[str, TensorEntry]:
    """The tensors of one ``.safetensors`` file, after checking the header parses and the data offsets cover the
    file exactly (a truncated file fails here). ``advice`` ends every error message."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise HaruhiError(f"{p} is not a safetensors file (too short); {advice}")
            (header_len,) = struct.unpack("<Q", head)
            if header_len <= 0 or 8 + header_len > size or header_len > MAX_HEADER_BYTES:
                raise HaruhiError(f"{p} is not a valid safetensors file (bad header length; cut short?); {advice}")
            header = json.loads(fh.read(header_len))
    except PermissionError as exc:
        raise HaruhiError(f"cannot read {p}: permission denied") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise HaruhiError(f"{p} is not a valid safetensors file (unreadable header); {advice}") from exc
    except OSError as exc:
        raise HaruhiError(f"cannot read {p}: {exc.strerror or exc}") from exc
    if not isinstance(header, dict):
        raise HaruhiError(f"{p} is not a valid safetensors file (its header is not an object); {advice}")
    data_start = 8 + header_len
    tensors: dict[str, TensorEntry] = {}
    covered = 0
    for name, desc in header.items():
        if name == "__metadata__":
            continue
        entry = _entry(name, desc, data_start)
        if entry is None:
            raise HaruhiError(f"{p} is corrupt (tensor {name} has no valid dtype, shape and offsets); {advice}")
        if entry.dtype in ITEMSIZE and entry.nbytes != math.prod(entry.shape) * ITEMSIZE[entry.dtype]:
            raise HaruhiError(f"{p} is corrupt (tensor {name}: its offsets do not fit its shape); {advice}")
        tensors[name] = entry
        covered = max(covered, entry.offset + entry.nbytes)
    expected = max(covered, data_start)
    if size < expected:
        raise HaruhiError(f"{p} is truncated ({size:,} of {expected:,} bytes; an interrupted write or copy?); "
                          f"{advice}")
    if size > expected:
        raise HaruhiError(f"{p} is corrupt ({size - expected:,} bytes after the last tensor); {advice}")
    return tensors


def _entry(name: str, desc: object, data_start: int) -> TensorEntry | None:
    if not isinstance(desc, dict):
        return None
    dtype, shape, offsets = desc.get("dtype"), desc.get("shape"), desc.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
        return None
    numbers = [*shape, *offsets]
    if len(offsets) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers):
        return None
    begin, end = offsets
    if end < begin:
        return None
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, end - begin)
