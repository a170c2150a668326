"""Files: atomic output and careful input, a file's hash, sizes as people read them.

Writers: a file goes to a temp file beside its target, is fsynced and renamed over it, so there is never
half a file on disk; a *set* of files (a dataset build) is staged in a temp folder and renamed in together
with Ctrl-C held back, so an interruption leaves the old set or the new one, never a mix.
Readers: every OS or decode error becomes a :class:`HaruhiError` naming the file and what is wrong.

Every temp file or folder a writer makes beside its target is named ``.<target name>.<pid>.<…>.tmp`` (the
converter's ``….partial`` too), so a later writer can sweep what a killed one left (:func:`remove_stale_temps`)
without touching a run still going; and every file or folder that becomes an output gets the permissions a
plain ``open``/``mkdir`` would give (0644/0755 under the usual umask), not a temp file's private 0600/0700.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import HaruhiError
from .processes import pid_alive
from .progress import Progress, report


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (changing it races with threads)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _virtual_file_system(folder: Path) -> bool:
    """A folder on /proc, /sys and the like: no blocks, no room for files, whatever access() says."""
    try:
        return os.statvfs(folder).f_blocks == 0
    except OSError:
        return False


def _write_error(folder: Path, exc: OSError) -> HaruhiError:
    if folder.is_dir() and _virtual_file_system(folder):
        return HaruhiError(f"cannot write to {folder}: it is on a virtual file system (like /proc or /sys), "
                           "which holds no files; choose a folder on a disk")
    if isinstance(exc, PermissionError):
        return HaruhiError(f"cannot write to {folder}: permission denied; choose another output folder")
    return HaruhiError(f"cannot write to {folder}: {exc.strerror or exc}")


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` if needed and prove a file can be made in it, before long work writes there: a
    HaruhiError says what is wrong (permission, read-only, a virtual file system such as /proc)."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = temp_file(path / "write-check")
    except OSError as exc:
        raise _write_error(path, exc) from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


# -- temp files beside their target -----------------------------------------------------------------------

TEMP_SUFFIX = ".tmp"
#: Endings of the temp names our writers make (``.partial``: the converter's GGUF under construction).
TEMP_ENDINGS = (TEMP_SUFFIX, ".partial")


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def public_mode(fd_or_path: int | str | os.PathLike, folder: bool = False) -> None:
    """Give a temp file (or folder) the permissions a plain ``open`` (``mkdir``) would have given it."""
    mode = (0o777 if folder else 0o666) & ~_umask()
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)


def make_public(path: str | os.PathLike) -> None:
    """``path`` and everything under it get the permissions a plain ``open``/``mkdir`` would give: savers
    that write through private temp files of their own (safetensors' ``save_file``) leave 0600 behind."""
    root = Path(path)
    for item in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if not item.is_symlink():
            with contextlib.suppress(OSError):
                public_mode(item, folder=item.is_dir())


def temp_file(target: Path) -> tuple[int, Path]:
    """A new temp file beside ``target`` (``.<name>.<pid>.<random>.tmp``, public permissions): fd and path."""
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        public_mode(fd)
    except OSError:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, Path(name)


def temp_dir(target: Path) -> Path:
    """A new temp folder beside ``target`` (``.<name>.<pid>.<random>.tmp``, public permissions), for a set
    of files that replaces ``target`` (a folder) or whose files move out into the folder."""
    path = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent))
    public_mode(path, folder=True)
    return path


def temp_path(target: Path, tag: str = "partial") -> Path:
    """A fixed temp name for ``target`` owned by this process: ``.<name>.<pid>.<tag>`` (tag ending .tmp or
    .partial), for writers that open the file themselves (the GGUF writer, llama.cpp's quantizer)."""
    if not tag.endswith(tuple(e.lstrip(".") for e in TEMP_ENDINGS)):
        raise ValueError(f"temp tag {tag!r} must end in one of {TEMP_ENDINGS}")
    return target.with_name(f"{_temp_prefix(target)}{tag}")


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove the temp files and folders our writers left beside ``target`` (``.<name>.<pid>.….tmp`` or
    ``.partial``) whose process is gone (kill -9, a power cut); a run still going keeps its own."""
    target = Path(target)
    removed = []
    prefix = f".{target.name}."
    try:
        candidates = list(target.parent.glob(glob.escape(prefix) + "*"))
    except OSError:
        return []
    for path in candidates:
        pid_text = path.name[len(prefix):].partition(".")[0]
        if not pid_text.isdigit() or not path.name.endswith(TEMP_ENDINGS):
            continue
        if int(pid_text) == os.getpid() or pid_alive(int(pid_text)):
            continue  # its writer is still at work
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file next to ``path``; on success it replaces ``path``, on any error it is removed.

    The file gets the permissions a plain ``open`` would give (0644 under the usual umask), not the
    private 0600 of a temp file.
    """
    target = Path(path)
    if target.is_dir():
        raise HaruhiError(f"{target} is a folder: move it away or write somewhere else")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        fd, tmp = temp_file(target)
    except OSError as exc:
        raise _write_error(target.parent, exc) from exc
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


# -- a set of files, replaced together ------------------------------------------------------------------------

@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM/SIGHUP) back for a short critical section; deliver them when it ends.

    Only the main thread can install signal handlers; elsewhere the section simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not None:  # None: a handler not installed from Python
            previous[sig] = signal.signal(sig, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


def _check_targets(folder: Path, names: Iterable[str]) -> None:
    for name in names:
        target = folder / name
        if target.is_dir() or (target.exists() and not target.is_file()):
            kind = "a folder" if target.is_dir() else "not a regular file"
            raise HaruhiError(f"{target} is {kind}: move it away or choose another output folder "
                              "(nothing was replaced)")


def _commit(stage: Path, folder: Path, names: list[str]) -> None:
    """Rename the staged files over their targets; on an OS error put back the ones already replaced."""
    backup = stage / ".previous"
    backup.mkdir()
    replaced: list[tuple[str, bool]] = []  # (name, had an old file)
    try:
        for name in names:
            target = folder / name
            had_old = target.is_file()
            if had_old:
                try:
                    os.link(target, backup / name)
                except OSError:  # a file system without hard links
                    shutil.copy2(target, backup / name)
            os.replace(stage / name, target)
            replaced.append((name, had_old))
    except OSError as exc:
        for name, had_old in reversed(replaced):
            with contextlib.suppress(OSError):
                if had_old:
                    os.replace(backup / name, folder / name)
                else:
                    os.unlink(folder / name)
        raise HaruhiError(f"cannot replace files in {folder}: {exc.strerror or exc} "
                          "(the previous files were kept)") from exc
    with contextlib.suppress(OSError):  # make the renames durable; not every platform can fsync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


STAGING_NAME = "haruhi-staging"


@contextlib.contextmanager
def replace_together(folder: str | os.PathLike, names: Iterable[str]) -> Iterator[Path]:
    """Stage files ``names`` in a temp folder inside ``folder``; when the block ends without an error they
    replace ``folder/<name>`` as a set (Ctrl-C held back during the renames). On an error or Ctrl-C the
    old files stay as they were. Other files in ``folder`` are left alone.
    """
    out = Path(folder)
    wanted = list(names)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HaruhiError(f"cannot create output folder {out}: {exc.strerror or exc}") from exc
    _check_targets(out, wanted)
    try:
        remove_stale_temps(out / STAGING_NAME)
        stage = temp_dir(out / STAGING_NAME)
    except OSError as exc:
        raise _write_error(out, exc) from exc
    try:
        yield stage
        missing = [name for name in wanted if not (stage / name).is_file()]
        if missing:
            raise RuntimeError(f"replace_together: {', '.join(missing)} not written")  # a bug, not bad input
        _check_targets(out, wanted)
        with signals_held():
            _commit(stage, out, wanted)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# -- reading ------------------------------------------------------------------------------------------------

def read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    """A file's bytes, or a HaruhiError saying it is missing, a folder, or unreadable."""
    p = Path(path)
    try:
        if p.is_dir():
            raise HaruhiError(f"{what} {p} is a folder, not a file")
        if not p.is_file():
            raise HaruhiError(f"{what} not found: {p}")
        return p.read_bytes()
    except PermissionError as exc:
        raise HaruhiError(f"cannot read {p}: permission denied") from exc
    except OSError as exc:
        raise HaruhiError(f"cannot read {p}: {exc.strerror or exc}") from exc


def decode_utf8(data: bytes, where: str) -> str:
    """JSON text as UTF-8 (a BOM is allowed), or a HaruhiError that tells a file cut short from one in another
    encoding."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.end >= len(data) and exc.reason == "unexpected end of data":
            raise HaruhiError(f"{where} is cut short (it ends inside a UTF-8 character): "
                              "not valid JSON; write or download it again") from exc
        line = data.count(b"\n", 0, exc.start) + 1
        raise HaruhiError(f"{where} is not UTF-8 text ({exc.reason} at line {line}); save it as UTF-8") from exc


def parse_json(text: str, where: str) -> Any:
    """``json.loads`` with every failure as a HaruhiError naming ``where`` (cut short, syntax, too deep)."""
    if not text.strip():
        raise HaruhiError(f"{where} is empty, not JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if not text[exc.pos :].strip() or exc.msg.startswith("Unterminated string"):  # the text ran out
            raise HaruhiError(f"{where} is not valid JSON: it ends in the middle (cut short?): {exc.msg} "
                              f"(line {exc.lineno} column {exc.colno}); write or download it again") from exc
        raise HaruhiError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise HaruhiError(f"{where} is not usable JSON: nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise HaruhiError(f"{where} is not usable JSON: {exc}") from exc


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON or raise a HaruhiError naming the file and what is wrong (missing, cut short, line of a
    syntax error, not UTF-8)."""
    p = Path(path)
    return parse_json(decode_utf8(read_bytes(p, what), str(p)), str(p))


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
