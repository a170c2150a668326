"""More characters from the ChatHaruhi datasets on the Hugging Face hub, converted into character folders.

The hub layout, as ChatHaruhi's own loading code reads it (what was read, in LC1332/Chat-Haruhi-Suzumiya
and LC1332/Zero-Haruhi, the ChatHaruhi 3.0 code):

* ``ChatHaruhi2.0/ChatHaruhi/ChatHaruhi.py`` (Chat-Haruhi-Suzumiya): ``role_from_hf="owner/repo/<name>"``
  loads the file ``<name>.jsonl`` of that *dataset* repo (``load_dataset(repo, data_files={"train":
  "<name>.jsonl"})``). Each row is ``{"text": ..., <embedding column>: ...}``; the embedding column
  (``luotuo_openai``, ``bge_en_s15`` for the English roles) holds the word ``system_prompt`` on the row
  whose text is the role prompt, ``config`` on a reserved row, and a base64 float32 vector on every row
  whose text is a classic scene.
* ``ChatHaruhi/ChatHaruhi.py`` and ``ChatHaruhi/sugar_map.py`` (Zero-Haruhi): the same rows (also a
  ``bge_zh_s15`` column; the text may instead be base64 UTF-8 in ``enc_text``); ``load_role_from_sugar``
  maps ChatHaruhi's 32 characters to ``silk-road/ChatHaruhi-RolePlaying/<name>`` (``enname2zhname`` has
  their Chinese names).
* ``ChatHaruhi/utils.py`` ``package_role`` (Zero-Haruhi): how the files were written: the role prompt row,
  a ``Reserve Config Setting Here`` row, then one row per ``texts/*.txt`` file with its whole content: a
  scene row is exactly one of our ``texts/`` files.
* ``ChatHaruhi2.0/make_roleLLM_data.py`` (Chat-Haruhi-Suzumiya): how RoleLLM's RoleBench scripts became
  ``silk-road/ChatHaruhi-from-RoleLLM/<Role Name>.jsonl``: prompt "I want you to act like {role} from
  {series}…" plus RoleBench's description; scenes are chunks of ``role:「line」`` lines.
* ``notebook/current_roles.md`` (Chat-Haruhi-Suzumiya): the 32 + 95 characters and how to load them (our
  :mod:`.hub_catalogue`); ``README.md``: "Data License CC BY-NC 4.0" (the ChatHaruhi-RolePlaying dataset card
  says apache-2.0; the stricter project statement is followed), ChatHaruhi-from-RoleLLM's card says cc-by-4.0.

A download goes through :mod:`.hub` (resumable ``.part`` files, hash-checked) into
``<data dir>/downloads/characters``, is converted into ``<data dir>/characters/<folder>`` (written as a hidden
folder, renamed when complete) with a ``character.json`` naming its source and licence, then the raw file is
deleted. A character already in the library is not fetched again, so a second run is a no-op.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal
from urllib.parse import quote

from haruhi_tui.core.character_manifest import CharacterManifest, Source, write_manifest
from haruhi_tui.core.characters import detect_speaking_name, parse_scene
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import write_text
from haruhi_tui.core.paths import data_dir
from haruhi_tui.core.progress import Progress, report

from . import hub
from .character_library import HUB_URL_PREFIX, CharacterLibrary
from .hub_catalogue import CHATHARUHI, ROLELLM

Collection = Literal["chatharuhi", "rolellm"]
REPOS: dict[Collection, str] = {"chatharuhi": "silk-road/ChatHaruhi-RolePlaying",
                                "rolellm": "silk-road/ChatHaruhi-from-RoleLLM"}
LICENCES: dict[Collection, tuple[str, str]] = {
    "chatharuhi": ("CC BY-NC 4.0", "ChatHaruhi (Chat-Haruhi-Suzumiya) by Cheng Li, Ziang Leng et al., "
                   "https://github.com/LC1332/Chat-Haruhi-Suzumiya; the project states its data licence as "
                   "CC BY-NC 4.0"),
    "rolellm": ("CC BY 4.0", "RoleBench of RoleLLM (Zekun Moore Wang et al., arXiv:2310.00746, "
                "https://github.com/InteractiveNLP-Team/RoleLLM-public), converted by ChatHaruhi; the dataset "
                "card states CC BY 4.0"),
}
_MARKERS = ("system_prompt", "config")
_PLACEHOLDER = re.compile(r"\{\{RAG|^Classic scenes for the role are as follows:?\s*$")


@dataclass(frozen=True)
class HubCharacter:
    """One character on the hub: ``stem`` is its file name without ``.jsonl``."""

    stem: str
    display_name: str
    work: str
    collection: Collection

    @property
    def folder(self) -> str:
        """Our folder name: the stem with anything but letters, digits and dashes made ``_``."""
        return re.sub(r"[^\w\-]+", "_", self.stem).strip("_")

    @property
    def repo(self) -> str:
        return REPOS[self.collection]

    @property
    def filename(self) -> str:
        return f"{self.stem}.jsonl"

    @property
    def url(self) -> str:
        return f"{HUB_URL_PREFIX}{self.repo}/blob/main/{quote(self.filename)}"

    def source(self) -> Source:
        licence, attribution = LICENCES[self.collection]
        return Source(kind=self.collection, url=self.url, licence=licence, attribution=attribution)


def catalogue() -> list[HubCharacter]:
    """Every character the hub datasets hold: ChatHaruhi's 32, then RoleLLM's 95."""
    return ([HubCharacter(stem, name, work, "chatharuhi") for stem, name, work in CHATHARUHI]
            + [HubCharacter(stem, stem, work, "rolellm") for stem, work in ROLELLM])


def _squash(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.casefold())


def resolve(names: Iterable[str]) -> list[HubCharacter]:
    """The catalogue entries for ``names`` (folder, hub name or display name; case, spaces and dashes do not
    matter: ``jack-sparrow`` is ``Jack Sparrow``); an unknown name is a one-line error with close matches."""
    every = catalogue()
    index: dict[str, HubCharacter] = {}
    for c in every:
        for key in (c.stem, c.folder, c.display_name):
            index.setdefault(_squash(key), c)
    out: list[HubCharacter] = []
    for name in names:
        found = index.get(_squash(name))
        if found is None:
            close = difflib.get_close_matches(name, [c.stem for c in every] + [c.display_name for c in every],
                                              n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise HaruhiError(f"no character {name!r} on the ChatHaruhi hub{hint}: `haruhi characters list --hub` "
                              "lists all 127")
        if found not in out:
            out.append(found)
    return out


# -- conversion ------------------------------------------------------------------------------------
def _row_text(row: dict, where: str) -> str:
    if isinstance(row.get("text"), str):
        return row["text"]
    if isinstance(row.get("enc_text"), str):
        try:
            return base64.b64decode(row["enc_text"]).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise HaruhiError(f"{where}: 'enc_text' is not base64 UTF-8 text") from exc
    raise HaruhiError(f"{where}: a row without 'text': not a ChatHaruhi character file")


def read_character_rows(path: Path) -> tuple[str, list[str]]:
    """The role prompt and the scenes of a hub ``.jsonl`` (rows as ChatHaruhi writes them)."""
    prompt, scenes = "", []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HaruhiError(f"cannot read {path.name}: {exc}") from exc
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"{path.name}, line {number}"
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise HaruhiError(f"{where} is not JSON ({exc.msg}): not a ChatHaruhi character file") from exc
        if not isinstance(row, dict):
            raise HaruhiError(f"{where}: expected a JSON object")
        text = _row_text(row, where)
        marker = next((v for k, v in row.items() if k not in ("text", "enc_text") and v in _MARKERS), None)
        if marker == "system_prompt":
            prompt = text
        elif marker is None and text.strip():
            scenes.append(text)
    if not prompt.strip() and not scenes:
        raise HaruhiError(f"{path.name} has neither a role prompt nor scenes: not a ChatHaruhi character file")
    return prompt, scenes


def clean_prompt(prompt: str) -> str:
    """The role prompt without ChatHaruhi's retrieval placeholders (our persona builder adds the scenes)."""
    return "\n".join(line for line in prompt.strip().splitlines() if not _PLACEHOLDER.search(line.strip())).strip()


def convert(jsonl: Path, character: HubCharacter, root: Path) -> Path:
    """Write ``root/<folder>`` (system_prompt.txt, texts/NNNN.txt, character.json) from a hub file, as a
    whole: it is built in a hidden folder and renamed into place when complete."""
    prompt, texts = read_character_rows(jsonl)
    prompt = clean_prompt(prompt)
    final = root / character.folder
    building = root / f".{character.folder}.partial"
    if building.exists():
        shutil.rmtree(building)
    (building / "texts").mkdir(parents=True)
    width = max(4, len(str(len(texts))))
    for i, text in enumerate(texts, 1):
        write_text(building / "texts" / f"{i:0{width}d}.txt", text.strip() + "\n")
    if prompt:
        write_text(building / "system_prompt.txt", prompt + "\n")
    scenes = [parse_scene(f"{character.folder}/{i}", t) for i, t in enumerate(texts)]
    speakers = {line.speaker for s in scenes for line in s.lines if line.speaker}
    name = character.display_name if character.display_name in speakers else (
        detect_speaking_name(character.folder, prompt, scenes) if speakers else "")
    write_manifest(building, CharacterManifest(
        name=name, display_name=character.display_name, work=character.work, source=character.source(),
        tags=(character.collection, "hub")))
    os.replace(building, final)
    return final


# -- downloading -----------------------------------------------------------------------------------
@dataclass
class GetReport:
    """What a ``get`` did: converted characters, those already there (with why), those the hub lacks."""

    fetched: list[HubCharacter] = field(default_factory=list)
    present: list[tuple[HubCharacter, str]] = field(default_factory=list)
    missing: list[HubCharacter] = field(default_factory=list)


def downloads_dir() -> Path:
    """Where raw hub files wait (and partial downloads resume) until they are converted."""
    return data_dir() / "downloads" / "characters"


def _already(character: HubCharacter, library: CharacterLibrary) -> str:
    entry = next((e for e in library.entries() if e.key.casefold() == character.folder.casefold()), None)
    if entry is None:
        return ""
    if entry.origin == "bundled":
        return "bundled with haruhi-tui"
    if entry.origin == "downloaded":
        return "already downloaded"
    where = library.configured_dir if entry.origin == "configured" else library.user_dir
    return f"a character folder {entry.key} is already in {where} ({entry.origin})"


def get_characters(wanted: list[HubCharacter], library: CharacterLibrary, *, progress: Progress | None = None,
                   token: str | None = None) -> GetReport:
    """Download and convert ``wanted`` into the library's user folder; one progress bar over all bytes.

    Characters already in the library are skipped before the hub is asked anything (a second run is a
    no-op); an interrupted run resumes the partial file; each character is in place as soon as it is done.
    """
    result = GetReport()
    pending: list[HubCharacter] = []
    for character in wanted:
        reason = _already(character, library)
        if reason:
            result.present.append((character, reason))
        else:
            pending.append(character)
    if not pending:
        return result
    sizes: dict[HubCharacter, int] = {}
    for repo in dict.fromkeys(c.repo for c in pending):
        files = hub.repo_files(repo, repo_type="dataset", token=token)
        for character in (c for c in pending if c.repo == repo):
            if character.filename in files:
                sizes[character] = files[character.filename] or 0
            else:
                result.missing.append(character)
    pending = [c for c in pending if c in sizes]
    total = sum(sizes.values()) or 1
    done = 0
    library.user_dir.mkdir(parents=True, exist_ok=True)
    for n, character in enumerate(pending, 1):
        label = f"[{n}/{len(pending)}] {character.display_name}"
        size = sizes[character]
        shown = [done / total]

        def step(fraction: float | None, message: str, label=label, size=size, shown=shown) -> None:
            if fraction is not None:
                shown[0] = (done + fraction * size) / total
            if progress is not None:
                progress(shown[0], f"{label}: {message}")

        cache = downloads_dir() / character.repo.split("/")[-1]
        hub.download_files(character.repo, [character.filename], cache, repo_type="dataset", token=token,
                           progress=step)
        raw = cache / character.filename
        try:
            report(progress, (done + size) / total, f"{label}: converting")
            convert(raw, character, library.user_dir)
        finally:
            raw.unlink(missing_ok=True)
        done += size
        result.fetched.append(character)
    library.scan()
    report(progress, 1.0, f"{len(result.fetched)} character(s) added to {library.user_dir}")
    return result
