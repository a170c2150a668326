"""The GGUF models on this machine, as the model picker and ``haruhi models list`` show them: found in the
models folders (one level of subfolders, split models by their first part) and described from their headers
(architecture, name, size, parameters, quantization, chat template, prompt style). A damaged or
half-downloaded file is listed as broken with the reason, never a crash."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from haruhi_tui.core.gguf_header import GGUFError, is_first_part, model_stem, split_parts
from haruhi_tui.core.gguf_info import GGUFInfo
from haruhi_tui.core.paths import models_dir
from haruhi_tui.core.prompt_format import Style

from .bundled_model import BUNDLED_NAME, bundled_gguf_path


@dataclass(frozen=True)
class LocalModel:
    """A GGUF on disk as the model picker shows it. ``broken`` holds why it cannot be used (else None)."""

    path: Path
    size_bytes: int
    name: str
    architecture: str = ""
    parameters: int | None = None
    size_label: str = ""
    quantization: str = ""
    context_length: int = 0
    has_chat_template: bool = False
    style: Style = "script"
    parts: int = 1
    bundled: bool = False
    broken: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None

    @property
    def parameters_label(self) -> str:
        """``270M`` / ``20.9B``: from the tensor shapes, else the file's size label."""
        if self.parameters:
            n = float(self.parameters)
            for unit in ("", "K", "M", "B", "T"):
                if n < 1000 or unit == "T":
                    return f"{n:.3g}{unit}" if unit else str(int(n))
                n /= 1000
        return self.size_label


def read_local_model(path: str | os.PathLike, *, bundled: bool = False) -> LocalModel:
    """Read a GGUF's header (and those of its split parts); any problem becomes ``broken``, never an exception."""
    p = Path(path).expanduser()
    try:
        info = GGUFInfo.read(p)
    except GGUFError as exc:
        try:
            size = p.stat().st_size
        except OSError:
            size = 0
        return LocalModel(p, size, model_stem(p), parts=len(split_parts(p)), bundled=bundled, broken=str(exc))
    return LocalModel(
        path=p,
        size_bytes=info.size_bytes,
        name=BUNDLED_NAME if bundled else info.name,
        architecture=info.architecture,
        parameters=info.parameters or None,
        size_label=info.size_label,
        quantization=info.quantization,
        context_length=info.context_length,
        has_chat_template=info.chat_template is not None,
        style=info.style,
        parts=info.parts,
        bundled=bundled,
    )


def _gguf_files(base: Path) -> list[Path]:
    """``*.gguf`` in ``base`` and one level of subfolders (a downloaded repo), split models by their first part."""
    try:
        candidates = sorted(base.glob("*.gguf")) + sorted(base.glob("*/*.gguf"))
    except OSError:
        return []
    found = []
    for path in candidates:
        if not is_first_part(path.name) or path.name.startswith(".") or "mmproj" in path.name.lower():
            continue
        found.append(path)
    return found


def list_local_models(
    dirs: Iterable[str | os.PathLike] | None = None,
    paths: Sequence[str | os.PathLike] = (),
    *,
    include_default: bool = False,
) -> list[LocalModel]:
    """GGUF models in ``dirs`` (default: the models folder) and explicit ``paths``, sorted by name.

    With ``include_default`` the bundled Gemma 3 270M is listed first if it has been assembled.
    Unreadable folders are skipped; unusable files are listed with ``broken`` set.
    """
    seen: dict[Path, LocalModel] = {}
    bundled = bundled_gguf_path()
    if include_default and bundled.is_file():
        seen[bundled.resolve()] = read_local_model(bundled, bundled=True)
    files: list[Path] = []
    for d in (list(dirs) if dirs is not None else [models_dir()]):
        base = Path(d).expanduser()
        if base.is_dir():
            files.extend(_gguf_files(base))
    files.extend(Path(p).expanduser() for p in paths)
    listed = []
    for path in files:
        key = path.resolve()
        if key not in seen:
            seen[key] = read_local_model(path)
            listed.append(seen[key])
    listed.sort(key=lambda m: (m.name.lower(), str(m.path)))
    head = [m for m in seen.values() if m.bundled]
    return head + listed
