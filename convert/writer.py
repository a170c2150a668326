"""Write a GGUF one tensor at a time, into a temp file that becomes the output only when complete.

``gguf.GGUFWriter`` keeps every tensor in memory until ``write_tensors_to_file``. A GGUF only needs
each tensor's name, shape, type and size before the data, so we declare them all up front
(``add_tensor_info``), let GGUFWriter write the header, key/values and tensor infos, and then stream
each tensor's bytes (produced chunk by chunk) at the aligned offsets those infos promised. Memory
stays at the size of one chunk, whatever the size of the model.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import time
from pathlib import Path
from typing import Callable, Iterable

import gguf
import numpy as np
import torch

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import temp_path

from . import quant
from .architectures import OutTensor


def temp_path_for(target: Path) -> Path:
    """The GGUF under construction: ``.<name>.<pid>.partial`` beside it (swept by
    :func:`haruhi_tui.core.fsutil.remove_stale_temps` once this process is gone)."""
    return temp_path(target, "partial")


@contextlib.contextmanager
def terminate_as_interrupt():
    """Make SIGTERM behave like Ctrl-C so the temp file is removed on ``kill`` too."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_NUMPY_OF = {gguf.GGUFValueType.INT32: "<i4", gguf.GGUFValueType.UINT32: "<u4", gguf.GGUFValueType.FLOAT32: "<f4",
             gguf.GGUFValueType.INT64: "<i8", gguf.GGUFValueType.UINT64: "<u8", gguf.GGUFValueType.FLOAT64: "<f8"}


class _Writer(gguf.GGUFWriter):
    """GGUFWriter with array packing done in bulk (a 200k-token vocabulary and its merges pack in a
    fraction of a second instead of seconds); the bytes are the same as GGUFWriter's."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):  # type: ignore[override]
        if (vtype == gguf.GGUFValueType.ARRAY and isinstance(val, (list, tuple)) and val
                and self.endianess == gguf.GGUFEndian.LITTLE and len({type(v) for v in val}) == 1):
            ltype = sub_type or gguf.GGUFValueType.get_type(val[0])
            head = struct.pack("<I", vtype) if add_vtype else b""
            head += struct.pack("<IQ", ltype, len(val))
            if ltype == gguf.GGUFValueType.STRING:
                parts = [head]
                for item in val:
                    data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
                    parts.append(struct.pack("<Q", len(data)))
                    parts.append(data)
                return b"".join(parts)
            if ltype in _NUMPY_OF:
                return head + np.asarray(val, dtype=_NUMPY_OF[ltype]).tobytes()
        return super()._pack_val(val, vtype, add_vtype, sub_type)


class GGUFStream:
    """A GGUF under construction: metadata via ``gw`` (a GGUFWriter), tensors via ``write``."""

    def __init__(self, target: Path, arch: str) -> None:
        self.target = target
        self.gw = _Writer(path=None, arch=arch)
        self.tensors: list[OutTensor] = []

    def declare(self, tensors: Iterable[OutTensor]) -> None:
        for t in tensors:
            self.gw.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
            self.tensors.append(t)

    def data_bytes(self) -> int:
        align = self.gw.data_alignment
        return sum(gguf.GGUFWriter.ggml_pad(t.nbytes, align) for t in self.tensors)

    def write(self, on_tensor: Callable[[OutTensor, int, float], None] | None = None,
              temp: Path | None = None) -> Path:
        """Write everything to a temp file beside the target and rename it over the target."""
        tmp = temp or temp_path_for(self.target)
        gw = self.gw
        try:
            with terminate_as_interrupt():
                gw.open_output_file(tmp)
                gw.write_header_to_file()
                gw.write_kv_data_to_file()
                gw.write_ti_data_to_file()
                fout = gw.fout[0]
                align = gw.data_alignment
                _pad(fout, align)
                for t in self.tensors:
                    started = time.monotonic()
                    written = 0
                    for chunk in t.produce():
                        if isinstance(chunk, np.ndarray) and chunk.dtype == np.uint8 and t.qtype in quant.BLOCKED:
                            data = chunk  # already quantized blocks
                        else:
                            tensor = chunk if isinstance(chunk, torch.Tensor) else torch.as_tensor(chunk)
                            data = quant.encode(tensor, t.qtype)
                        buf = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
                        fout.write(memoryview(buf))
                        written += buf.nbytes
                    if written != t.nbytes:
                        raise RuntimeError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")
                    _pad(fout, align)
                    if on_tensor:
                        on_tensor(t, written, time.monotonic() - started)
                fout.flush()
                os.fsync(fout.fileno())
                gw.close()
                os.replace(tmp, self.target)
        except BaseException:
            with contextlib.suppress(Exception):
                gw.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return self.target


def _pad(fout, align: int) -> None:
    pos = fout.tell()
    pad = (-pos) % align
    if pad:
        fout.write(b"\0" * pad)


def check_free_space(directory: Path, needed: int, what: str = "the output") -> None:
    import shutil

    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        raise HaruhiError(f"cannot check free space in {directory}: {exc.strerror}") from exc
    margin = 64 * 1024 * 1024
    if free < needed + margin:
        raise HaruhiError(
            f"not enough disk space in {directory}: {what} needs about {_gib(needed)} and {_gib(free)} is free; "
            "free some space or choose another --out folder"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
