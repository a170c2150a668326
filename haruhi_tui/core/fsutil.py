"""Files: atomic output (write to a temp file beside the target, fsync, rename: never half a file on disk), JSON
in and out, a file's hash, sizes as people read them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import HaruhiError
from .progress import Progress, report


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file next to ``path``; on success it replaces ``path``, on any error it is removed."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except PermissionError as exc:
        raise HaruhiError(f"cannot write to {target.parent}: permission denied; choose another output folder") from exc
    except OSError as exc:
        raise HaruhiError(f"cannot write to {target.parent}: {exc.strerror}") from exc
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else "\n") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> None:
    """Write JSON atomically, UTF-8 kept readable (CJK not escaped), key order as given (deterministic)."""
    with atomic_open(path) as fh:
        json.dump(data, fh, ensure_ascii=False, indent=indent)
        fh.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON or raise a HaruhiError naming the file and the line of the syntax error."""
    p = Path(path)
    if not p.is_file():
        raise HaruhiError(f"{what} not found: {p}")
    try:
        with p.open(encoding="utf-8") as fh:
            return json.load(fh)
    except UnicodeDecodeError as exc:
        raise HaruhiError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise HaruhiError(f"{p} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


def file_sha256(path: Path, progress: Progress | None = None, what: str = "verifying") -> str:
    """The hex SHA-256 of a file, read in blocks (reported as ``what <name>``)."""
    digest = hashlib.sha256()
    total = max(path.stat().st_size, 1)
    done = 0
    with path.open("rb") as fh:
        while block := fh.read(4 << 20):
            digest.update(block)
            done += len(block)
            report(progress, done / total, f"{what} {path.name}")
    return digest.hexdigest()


def human_bytes(n: float) -> str:
    """1.2 GB: decimal units, as the hub and disk tools show sizes."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
