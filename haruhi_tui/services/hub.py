"""Downloads from the Hugging Face hub: resumable across interruptions (a ``.part`` file keyed by the file's
ETag), checked for free disk space first, verified against the hub's hash at the end, one-line errors when
offline, gated or misspelt.

The fetching is generic (:func:`repo_files`, :func:`download_files`: any files of a model or dataset repo);
:func:`download` adds what is particular to models: picking the GGUF of a repo, all parts of a split GGUF, a
repo without GGUFs (a checkpoint) fetched whole, the models folder as the default destination.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import file_sha256, human_bytes
from haruhi_tui.core.gguf_header import is_first_part, split_parts
from haruhi_tui.core.paths import models_dir
from haruhi_tui.core.progress import Progress, report

RepoType = Literal["model", "dataset", "space"]
DOWNLOAD_CHUNK = 1 << 20

class OfflineError(HaruhiError):
    """The hub cannot be reached."""


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _instead(repo_type: RepoType) -> str:
    """What to do without the hub: a model can be copied into the models folder."""
    return f", or copy the file into {models_dir()}" if repo_type == "model" else ""


def _offline_message(what: str, repo_type: RepoType) -> str:
    return (f"cannot reach the Hugging Face hub: you are offline, or {_endpoint()} is down or blocked "
            f"(fetching {what}); try again when online{_instead(repo_type)}")


def _offline_env_message(what: str, repo_type: RepoType) -> str:
    return f"HF_HUB_OFFLINE is set, so {what} cannot be downloaded: unset it{_instead(repo_type)}"


@contextlib.contextmanager
def _hub_errors(repo_id: str, repo_type: RepoType, filename: str | None = None):
    """Turn huggingface_hub and network exceptions into one-line messages."""
    import httpx
    from huggingface_hub import errors

    what = f"{repo_id}/{filename}" if filename else repo_id
    try:
        yield
    except errors.OfflineModeIsEnabled:
        raise OfflineError(_offline_env_message(what, repo_type)) from None
    except errors.GatedRepoError:
        raise HaruhiError(f"{repo_id} is gated: accept its terms on the hub and log in (hf auth login), "
                          "then retry") from None
    except errors.RepositoryNotFoundError:
        raise HaruhiError(f"repository {repo_id} not found on the hub (check the name; private repos need "
                          "hf auth login)") from None
    except errors.RevisionNotFoundError:
        raise HaruhiError(f"{repo_id} has no such revision") from None
    except (httpx.ConnectError, httpx.ConnectTimeout, errors.LocalEntryNotFoundError):
        raise OfflineError(_offline_message(repo_id, repo_type)) from None
    except errors.EntryNotFoundError:
        raise HaruhiError(f"{repo_id} has no file {filename!r}: check the name in the repo's file list "
                          "on the hub") from None
    except errors.HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HaruhiError(f"the hub refused {what}: {first}") from None


def _check_offline_env(repo_id: str, repo_type: RepoType) -> None:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise OfflineError(_offline_env_message(repo_id, repo_type))


def _free_bytes(folder: Path) -> int:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        while block := fh.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _RemoteFile:
    filename: str
    url: str
    size: int | None
    etag: str
    repo_type: RepoType


def _remote_file(repo_id: str, filename: str, repo_type: RepoType, revision: str, token: str | None) -> _RemoteFile:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=_endpoint())
    with _hub_errors(repo_id, repo_type, filename):
        meta = get_hf_file_metadata(url, token=token, endpoint=_endpoint())
    if not meta.etag:
        raise HaruhiError(f"the hub sent no ETag for {repo_id}/{filename}: cannot download it reliably")
    return _RemoteFile(filename, meta.location or url, meta.size, meta.etag, repo_type)


def _partial_path(target: Path, etag: str) -> Path:
    """The resumable partial download: beside the target, named by the content's ETag (a new upload starts
    afresh)."""
    return target.with_name(f".{target.name}.{etag[:16]}.part")


def _fetch(remote: _RemoteFile, target: Path, token: str | None, progress: Progress | None,
           done_before: int, grand_total: int | None) -> None:
    """Download ``remote`` to ``target`` through a resumable ``.part`` file, then verify and rename."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    part = _partial_path(target, remote.etag)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.part"):
        if stale != part:
            stale.unlink(missing_ok=True)
    headers = build_hf_headers(token=token)
    headers["Accept-Encoding"] = "identity"
    if urlsplit(remote.url).hostname != urlsplit(_endpoint()).hostname:
        headers.pop("authorization", None)  # a signed CDN URL: never send the hub token elsewhere
    label = remote.filename
    last_time, last_bytes = 0.0, -1
    step = (grand_total or 0) // 200  # report every half percent, or every quarter second
    retries = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if remote.size is not None and have >= remote.size:
            break
        request_headers = dict(headers)
        if have:
            request_headers["Range"] = f"bytes={have}-"
        try:
            with get_session().stream("GET", remote.url, headers=request_headers, follow_redirects=True,
                                      timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
                hf_raise_for_status(response)
                mode = "ab" if have and response.status_code == 206 else "wb"
                if mode == "wb":
                    have = 0
                with part.open(mode) as fh:
                    for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                        fh.write(chunk)
                        have += len(chunk)
                        retries = 0
                        now = time.monotonic()
                        due = have - last_bytes > step or now - last_time > 0.25 or have == remote.size
                        if progress is not None and due:
                            last_time, last_bytes = now, have
                            done = done_before + have
                            fraction = done / grand_total if grand_total else None
                            size_text = f" of {human_bytes(grand_total)}" if grand_total else ""
                            progress(fraction, f"downloading {label}: {human_bytes(done)}{size_text}")
            if remote.size is None:
                break
        except (httpx.TransportError, httpx.StreamError) as exc:
            retries += 1
            if retries > 5:
                if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                    raise OfflineError(_offline_message(label, remote.repo_type)
                                       + "; run the same command again to resume") from None
                raise HaruhiError(f"the download of {label} keeps failing ({type(exc).__name__}); "
                                  "run the same command again to resume") from None
            time.sleep(min(2 ** (retries - 1), 8) * 0.25)
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink(missing_ok=True)
        raise HaruhiError(f"{label} arrived with {size} bytes instead of {remote.size}: run the command again")
    report(progress, None, f"verifying {label}")
    etag = remote.etag.lower()
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        actual = file_sha256(part)
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        actual = _git_blob_sha1(part)
    else:
        actual = etag
    if actual != etag:
        part.unlink(missing_ok=True)
        raise HaruhiError(f"{label} is corrupt (its hash does not match the hub's); run the command again "
                          "to re-download")
    os.replace(part, target)


def _is_complete(target: Path, remote: _RemoteFile) -> bool:
    return target.is_file() and (remote.size is None or target.stat().st_size == remote.size)


def repo_files(repo_id: str, *, repo_type: RepoType = "model", revision: str = "main",
               token: str | None = None) -> dict[str, int | None]:
    """File names and sizes of a hub repository (one API call)."""
    from huggingface_hub import HfApi

    _check_offline_env(repo_id, repo_type)
    with _hub_errors(repo_id, repo_type):
        info = HfApi(endpoint=_endpoint(), token=token).repo_info(repo_id, repo_type=repo_type, revision=revision,
                                                                  files_metadata=True)
    return {s.rfilename: s.size for s in (info.siblings or [])}


def download_files(repo_id: str, names: list[str], folder: Path, *, repo_type: RepoType = "model",
                   revision: str = "main", token: str | None = None, progress: Progress | None = None) -> None:
    """Download ``names`` of a hub repository into ``folder`` (each at ``folder/name``): free space checked
    against the hub's sizes first, files already complete skipped, partial ones resumed, every one verified."""
    _check_offline_env(repo_id, repo_type)
    report(progress, None, f"asking the hub about {repo_id}")
    remotes = [_remote_file(repo_id, name, repo_type, revision, token) for name in names]
    pending = [r for r in remotes if not _is_complete(folder / r.filename, r)]
    sizes = [r.size for r in remotes]
    grand_total = sum(s for s in sizes if s) if all(s is not None for s in sizes) else None
    needed = 0
    for r in pending:
        part = _partial_path(folder / r.filename, r.etag)
        needed += max((r.size or 0) - (part.stat().st_size if part.exists() else 0), 0)
    free = _free_bytes(folder)
    if needed > free:
        raise HaruhiError(f"not enough disk space in {folder}: {repo_id} needs {human_bytes(needed)} more, "
                          f"{human_bytes(free)} free; free some space or pass --dest on another disk")
    done_before = sum(r.size or 0 for r in remotes if r not in pending)
    for remote in pending:
        target = folder / remote.filename
        _fetch(remote, target, token, progress, done_before, grand_total)
        done_before += remote.size or target.stat().st_size
    report(progress, 1.0, f"downloaded {repo_id} to {folder}")


def pick_gguf(repo_id: str, files: dict[str, int | None]) -> str | None:
    """The GGUF to fetch when none is named: the only one, else the Q4_K_M one; None for a non-GGUF repo."""
    ggufs = sorted(f for f in files if f.endswith(".gguf") and "mmproj" not in f.lower())
    if not ggufs:
        return None
    firsts = [f for f in ggufs if is_first_part(PurePosixPath(f).name)]
    if len(firsts) == 1:
        return firsts[0]
    preferred = [f for f in firsts if "q4_k_m" in f.lower()]
    if len(preferred) == 1:
        return preferred[0]
    shown = ", ".join(firsts[:8]) + (" …" if len(firsts) > 8 else "")
    raise HaruhiError(f"{repo_id} has {len(firsts)} GGUF files; name one: {shown}")


def download(
    repo_id: str,
    filename: str | None = None,
    dest: str | os.PathLike | None = None,
    *,
    revision: str = "main",
    token: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download from the hub into ``dest`` (default: the models folder) and return the local path.

    ``filename`` names one file (kept at ``dest/filename``). Without it: a repo with one GGUF (or one
    Q4_K_M among several) gives that file; a repo without GGUF files (a transformers checkpoint) is
    downloaded whole into ``dest/<repo name>/``. Split GGUFs come with all their parts. Free disk space is
    checked against the hub's sizes before anything is written; an interrupted download resumes where it
    stopped when run again; every file is checked against the hub's hash.
    """
    base = Path(dest).expanduser() if dest is not None else models_dir()
    if filename is None:
        files = repo_files(repo_id, revision=revision, token=token)
        filename = pick_gguf(repo_id, files)
        if filename is None:
            if not files:
                raise HaruhiError(f"{repo_id} has no files")
            folder = base / repo_id.split("/")[-1]
            download_files(repo_id, sorted(files), folder, revision=revision, token=token, progress=progress)
            return folder
    names = [str(part) for part in split_parts(PurePosixPath(filename))]
    download_files(repo_id, names, base, revision=revision, token=token, progress=progress)
    return base / names[0]

