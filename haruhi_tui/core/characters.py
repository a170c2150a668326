"""ChatHaruhi character folders: ``system_prompt.txt`` plus ``texts/*.txt`` classic scenes.

The folders were made by different people, so the parser is tolerant: ASCII or full-width colons,
lines with or without 「」, narration and scene headings, English and Chinese, non-ASCII file names.
The character's *speaking* name (``春日`` for folder ``haruhi``) is recovered from the texts and the
role prompt.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .character_manifest import CharacterManifest, read_manifest
from .errors import HaruhiError
from .lorebook import Lorebook, character_lorebook

#: Speaker tags that mark narration or a scene heading rather than somebody talking.
NARRATION_SPEAKERS = frozenset(
    s.casefold()
    for s in (
        "", "旁白", "场景", "背景", "画外音", "scene", "'''scene'''", "narrator", "narration", "setting",
        "旁白君", "解说", "注",
    )
)
MAX_SPEAKER_LEN = 24
#: Longer lines are not dialogue (ChatHaruhi's longest is 4,240 characters): warned about and skipped.
MAX_LINE_CHARS = 20_000
#: A scene or role prompt file larger than this is skipped with a warning (ChatHaruhi's largest is 65 kB).
MAX_TEXT_BYTES = 50_000_000
#: A role prompt shorter than this is a placeholder (one folder ships a lone "N").
MIN_ROLE_PROMPT_CHARS = 20

_LINE = re.compile(r"^(?P<speaker>[^:：「」\n]{0,%d}?)\s*[:：]\s*(?P<rest>.*)$" % MAX_SPEAKER_LEN)


@dataclass(frozen=True)
class Line:
    """One line of a scene: ``speaker`` is ``None`` for narration and scene headings."""

    speaker: str | None
    text: str

    @property
    def is_narration(self) -> bool:
        return self.speaker is None


@dataclass(frozen=True)
class Scene:
    """One classic scene (one text file). ``scene_id`` is ``<folder>/<file name>``, stable across runs."""

    scene_id: str
    lines: tuple[Line, ...]

    def text(self) -> str:
        """The scene as the role prompt shows it: ``speaker:「line」`` per line, narration in brackets."""
        return "\n".join(format_line(line) for line in self.lines)


@dataclass
class Character:
    folder: str
    role_prompt: str
    scenes: list[Scene]
    name: str
    skipped_scenes: int = 0
    warnings: list[str] = field(default_factory=list)
    manifest: CharacterManifest = field(default_factory=CharacterManifest)  # character.json, if any
    path: Path | None = None  # the folder it was loaded from (its avatar, lorebook, source card live there)
    lorebook: Lorebook | None = None  # lorebook.json (world info), if any

    @cached_property
    def interlocutor(self) -> str:
        """Who the user plays by default: character.json's user, else who talks to this character most
        (阿虚 for 春日). A ``{{user}}`` macro (scenes from a character card) is whoever the user is: not a name."""
        if self.manifest.user_name:
            return self.manifest.user_name
        counts = Counter(
            line.speaker
            for scene in self.scenes
            for line in scene.lines
            if line.speaker and line.speaker != self.name and not line.speaker.startswith("{{")
        )
        return counts.most_common(1)[0][0] if counts else "User"

    @cached_property
    def first_line(self) -> str:
        """The character's first spoken line in the first scene: a taste of their voice for the picker."""
        for scene in self.scenes:
            for line in scene.lines:
                if line.speaker == self.name and line.text:
                    return line.text
        return ""

    @cached_property
    def source_work(self) -> str:
        """The work the character comes from: character.json's, else as the role prompt names it (best effort,
        may be empty)."""
        if self.manifest.work:
            return self.manifest.work
        patterns = (
            r"from\s+([^\n.,]+?)(?:\.|\n|,|$)",
            r"《([^》]+)》",
            r"(?:小说|游戏|动画|剧)([^\s，。,]{2,12})中",
        )
        for pattern in patterns:
            match = re.search(pattern, self.role_prompt)
            if match:
                return match.group(1).strip()
        return ""


def format_line(line: Line) -> str:
    """The one way a line is written back as text (scenes in prompts, user turns in datasets)."""
    if line.speaker is None:
        return f"（{line.text}）"
    return f"{line.speaker}:「{line.text}」"


def parse_line(raw: str) -> Line | None:
    """Parse ``Speaker:「text」`` (any colon, optional 「」, trailing stage directions kept)."""
    raw = raw.strip().lstrip("\ufeff")
    if not raw:
        return None
    match = _LINE.match(raw)
    if not match:
        return Line(None, _strip_quotes(raw))
    speaker = match.group("speaker").strip().strip("'\"*").strip()
    rest = match.group("rest").strip()
    if speaker.casefold() in NARRATION_SPEAKERS or speaker.strip("'").casefold() in NARRATION_SPEAKERS:
        text = _strip_quotes(rest).strip("'").strip()
        return Line(None, text) if text else None
    text = _strip_quotes(rest)
    if not text:
        return None
    return Line(speaker, text)


def _strip_quotes(rest: str) -> str:
    """``「a」(b)`` -> ``a(b)``; an unclosed 「 is dropped; text without 「」 is kept as is."""
    if rest.startswith("「"):
        close = rest.rfind("」")
        if close == -1:
            return rest[1:].strip()
        return (rest[1:close] + rest[close + 1 :]).strip()
    return rest.strip()


def parse_scene(scene_id: str, content: str, warnings: list[str] | None = None) -> Scene:
    """Parse a scene file. Lines longer than any real scene line (a file that is no scene, or lost its line
    breaks) are dropped, with one warning."""
    lines: list[Line] = []
    too_long: list[int] = []
    for raw in content.splitlines():
        if len(raw) > MAX_LINE_CHARS:
            too_long.append(len(raw))
        elif (line := parse_line(raw)) is not None:
            lines.append(line)
    if too_long and warnings is not None:
        count = f"{len(too_long)} lines of up to" if len(too_long) > 1 else "a line of"
        warnings.append(f"{scene_id}: {count} {max(too_long):,} characters skipped (a scene line is at most "
                        f"{MAX_LINE_CHARS:,}; is this a scene file?)")
    return Scene(scene_id, tuple(lines))


def detect_speaking_name(folder: str, role_prompt: str, scenes: list[Scene]) -> str:
    """The name this character speaks under in the texts.

    The most frequent speaker whose name appears in the role prompt or the folder name wins
    (``春日`` is inside ``凉宫春日``); without such a speaker, the most frequent speaker overall.
    """
    counts = Counter(line.speaker for scene in scenes for line in scene.lines if line.speaker)
    if not counts:
        return folder
    haystack = f"{role_prompt}\n{folder}".casefold()
    for speaker, _ in counts.most_common():
        if speaker.casefold() in haystack:
            return speaker
    return counts.most_common(1)[0][0]


def _read_text(path: Path, warnings: list[str], label: str) -> str | None:
    """A text file as UTF-8 or GB18030; a file that cannot be used is skipped with a warning naming it."""
    try:
        if not path.is_file():
            what = "a folder" if path.is_dir() else "a broken link or not a regular file"
            warnings.append(f"{label}: {what}, skipped")
            return None
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            warnings.append(f"{label}: {size / 1e6:,.0f} MB, more than a scene file can be "
                            f"({MAX_TEXT_BYTES / 1e6:.0f} MB), skipped")
            return None
        data = path.read_bytes()
    except OSError as exc:
        warnings.append(f"{label}: cannot be read ({exc.strerror or exc}), skipped")
        return None
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    warnings.append(f"{label}: not UTF-8 or GB18030 text, skipped")
    return None


def _display_name(name: str) -> str:
    """A file name as valid text: bytes that are not UTF-8 (kept by the OS as surrogates) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _runner_up(scenes: list[Scene], name: str) -> str | None:
    """A second speaker nearly as frequent as ``name`` (within 20 %), which makes the choice a guess."""
    counts = Counter(line.speaker for scene in scenes for line in scene.lines if line.speaker)
    top = counts.get(name, 0)
    for speaker, count in counts.most_common(2):
        if speaker != name and count >= 0.8 * top:
            return speaker
    return None


def load_character(folder: str | Path, speaker: str | None = None) -> Character:
    """Load one character folder. Problems that spoil only part of it become warnings, not errors."""
    path = Path(folder)
    if not path.is_dir():
        raise HaruhiError(f"character folder not found: {path}")
    folder_name = _display_name(path.name)
    warnings: list[str] = []
    prompt_file = path / "system_prompt.txt"
    role_prompt = ""
    if prompt_file.exists() or prompt_file.is_symlink():
        role_prompt = (_read_text(prompt_file, warnings, _display_name(str(prompt_file))) or "").strip()
    if len(role_prompt) < MIN_ROLE_PROMPT_CHARS:
        warnings.append(f"{folder_name}: empty or missing system_prompt.txt; a generic role prompt is used")
        role_prompt = ""
    texts = path / "texts"
    scenes: list[Scene] = []
    skipped = 0
    try:
        files = sorted(texts.glob("*.txt")) if texts.is_dir() else []
    except OSError as exc:
        warnings.append(f"{_display_name(str(texts))}: cannot be read ({exc.strerror or exc})")
        files = []
    for file in files:
        content = _read_text(file, warnings, _display_name(str(file)))
        scene = parse_scene(f"{folder_name}/{_display_name(file.name)}", content or "", warnings)
        if not scene.lines:
            skipped += 1
            continue
        scenes.append(scene)
    if not files:
        warnings.append(f"{folder_name}: no scenes in texts/")
    manifest = read_manifest(path)
    speaker = speaker or manifest.name or None
    name = speaker or detect_speaking_name(folder_name, role_prompt, scenes)
    if not speaker and not role_prompt:
        runner_up = _runner_up(scenes, name)
        if runner_up:
            warnings.append(
                f"{folder_name}: speaking name is ambiguous ({name} or {runner_up}); "
                f"pass --speaker {folder_name}=NAME to choose"
            )
    if not role_prompt:
        role_prompt = generic_role_prompt(name)
    lorebook = character_lorebook(path, warnings)
    return Character(folder_name, role_prompt, scenes, name, skipped, warnings, manifest, path, lorebook)


def generic_role_prompt(name: str) -> str:
    return (
        f"I want you to act like {name}. Respond and answer like {name}, using the tone, manner and "
        f"vocabulary {name} would use. Stay in character."
    )


def is_character_folder(path: Path) -> bool:
    """A folder counts if it has system_prompt.txt or texts/; hidden ones (a download being unpacked) do not."""
    return (not path.name.startswith(".") and path.is_dir()
            and ((path / "system_prompt.txt").exists() or (path / "texts").is_dir()))


def list_character_folders(root: str | Path) -> list[Path]:
    """Character folders under ``root`` (see :func:`is_character_folder`)."""
    base = Path(root)
    if not base.is_dir():
        raise HaruhiError(
            f"characters folder not found: {base} (pass --characters with a ChatHaruhi characters folder)"
        )
    try:
        folders = sorted(p for p in base.iterdir() if is_character_folder(p))
    except OSError as exc:
        raise HaruhiError(f"cannot read characters folder {base}: {exc.strerror or exc}") from exc
    if not folders:
        raise HaruhiError(f"no character folders in {base}: each needs system_prompt.txt and texts/*.txt")
    return folders


def load_characters(
    root: str | Path, only: list[str] | None = None, speakers: dict[str, str] | None = None
) -> list[Character]:
    """Load every character under ``root`` (or just ``only``, matched on folder or speaking name).

    ``speakers`` maps a folder name to its speaking name where detection cannot tell (``Megumi=加藤``).
    """
    return load_selected(list_character_folders(root), only, speakers, where=str(root))


def load_selected(
    folders: list[Path], only: list[str] | None = None, speakers: dict[str, str] | None = None, *, where: str = ""
) -> list[Character]:
    """Load ``folders`` (or just ``only`` among them, matched on folder or speaking name); ``where`` names
    them in the error when none of ``only`` is found."""
    speakers = speakers or {}
    if only:
        wanted = {o.casefold() for o in only}
        by_folder = [f for f in folders if f.name.casefold() in wanted]
        if len(by_folder) == len(wanted):  # all named by folder; else some are speaking names: read them all
            folders = by_folder
    characters = [load_character(f, speakers.get(f.name)) for f in folders]
    if only:
        characters = [c for c in characters if c.folder.casefold() in wanted or c.name.casefold() in wanted]
        if not characters:
            raise HaruhiError(f"none of {', '.join(only)} found under {where}")
    return characters
