"""Build ``haruhi_train`` / ``haruhi_val`` from ChatHaruhi character folders (the ChatHaruhi recipe).

Each scene becomes turns: the character's lines are assistant turns, everybody else's lines are user
turns (who speaks is kept: ``阿虚:「…」``), narration and headings are context folded into the next
user turn. The system message comes from the shared :class:`~haruhi_tui.core.persona.PersonaBuilder`
(role prompt + other scenes retrieved for the conversation, never the sample's own scene).

Scenes are split per character, deterministically for a seed, so no scene is in both splits.
Training samples are whole scenes (windows of ``max_turns``; every reply carries loss once);
validation samples are one per reply (history, then the line to predict), as evaluation needs.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

from .characters import Character, Scene, format_line, load_characters
from .errors import HaruhiError
from .fsutil import write_json
from .persona import PersonaBuilder, PromptBudget, Turn
from .prompt_format import Conversation, to_messages
from .sharegpt import Sample, dataset_info_entry, load_sharegpt, write_samples

TRAIN_NAME, VAL_NAME = "haruhi_train", "haruhi_val"
Unit = Literal["scene", "reply"]


@dataclass(frozen=True)
class BuildOptions:
    seed: int = 42
    val_fraction: float = 0.1
    max_turns: int = 16
    min_reply_chars: int = 2
    train_unit: Unit = "scene"
    val_unit: Unit = "reply"
    budget: PromptBudget = field(default_factory=PromptBudget)


@dataclass
class CharacterStats:
    folder: str
    name: str
    scenes: int = 0
    skipped_scenes: int = 0
    train_scenes: int = 0
    val_scenes: int = 0
    train_samples: int = 0
    val_samples: int = 0
    turns: int = 0
    text_chars: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class BuildResult:
    train: list[Sample]
    val: list[Sample]
    stats: list[CharacterStats]
    extra_samples: int = 0

    def report(self) -> dict:
        return {
            "train_samples": len(self.train),
            "val_samples": len(self.val),
            "extra_samples": self.extra_samples,
            "characters": [asdict(s) for s in self.stats],
        }


def scene_turns(scene: Scene, name: str) -> list[Turn]:
    """Turn a scene into alternating user/assistant turns (see module doc). Starts with a user turn."""
    turns: list[Turn] = []
    pending: list[str] = []  # user-side lines (other speakers, narration) not yet in a turn
    for line in scene.lines:
        if line.speaker == name:
            if pending:
                turns.append(Turn("user", "\n".join(pending), ""))
                pending = []
            if not turns:
                continue  # the character opens the scene: nothing to answer yet
            if turns[-1].role == "assistant":
                turns[-1] = Turn("assistant", turns[-1].text + "\n" + line.text, name)
            else:
                turns.append(Turn("assistant", line.text, name))
        else:
            pending.append(format_line(line))
    while turns and turns[-1].role != "assistant":
        turns.pop()
    return turns


def _windows(turns: list[Turn], max_turns: int) -> Iterable[list[Turn]]:
    """Split turns into windows of at most ``max_turns`` (even), each user-first, assistant-last."""
    size = max(2, max_turns - max_turns % 2)
    for start in range(0, len(turns), size):
        window = turns[start : start + size]
        if len(window) >= 2:
            yield window


def _query(turns: list[Turn]) -> str:
    return "\n".join(t.text for t in turns if t.role == "user")


def _sample(builder: PersonaBuilder, history: list[Turn], target: Turn, scene: Scene) -> Sample:
    """``history`` ends with the user turn ``target`` answers; that turn is kept whatever the budget."""
    prompt = builder.build(history[:-1], history[-1], query=_query(history), exclude_scene_ids=[scene.scene_id])
    conv = Conversation(prompt.system, (*prompt.turns, target), prompt.character)
    return Sample(to_messages(conv), builder.character.name, scene.scene_id)


def split_scenes(character: Character, seed: int, val_fraction: float) -> tuple[list[Scene], list[Scene]]:
    """Deterministic per-character split by scene (the seed and folder name fix the shuffle)."""
    scenes = list(character.scenes)
    random.Random(f"{seed}:{character.folder}").shuffle(scenes)
    n_val = round(len(scenes) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(scenes) >= 2:
        n_val = 1
    val_ids = {s.scene_id for s in scenes[:n_val]}
    return [s for s in character.scenes if s.scene_id not in val_ids], [s for s in character.scenes if s.scene_id in val_ids]


def build_character(character: Character, options: BuildOptions) -> tuple[list[Sample], list[Sample], CharacterStats]:
    stats = CharacterStats(character.folder, character.name, len(character.scenes), character.skipped_scenes,
                           warnings=list(character.warnings))
    builder = PersonaBuilder(character, options.budget)
    train_scenes, val_scenes = split_scenes(character, options.seed, options.val_fraction)
    out: dict[str, list[Sample]] = {"train": [], "val": []}
    for split, scenes, unit in (("train", train_scenes, options.train_unit), ("val", val_scenes, options.val_unit)):
        used = 0
        for scene in scenes:
            turns = scene_turns(scene, character.name)
            turns = [t for t in turns]  # keep order; filter short replies below
            if not any(t.role == "assistant" and len(t.text.strip()) >= options.min_reply_chars for t in turns):
                stats.skipped_scenes += 1
                continue
            used += 1
            stats.turns += len(turns)
            stats.text_chars += sum(len(t.text) for t in turns)
            if unit == "scene":
                for window in _windows(turns, options.max_turns):
                    out[split].append(_sample(builder, window[:-1], window[-1], scene))
            else:
                for k in range(1, len(turns), 2):
                    if len(turns[k].text.strip()) < options.min_reply_chars:
                        continue
                    history = turns[max(0, k + 1 - options.max_turns) : k]
                    out[split].append(_sample(builder, history, turns[k], scene))
        if split == "train":
            stats.train_scenes = used
        else:
            stats.val_scenes = used
    stats.train_samples, stats.val_samples = len(out["train"]), len(out["val"])
    return out["train"], out["val"], stats


def build(
    characters_dir: str | Path | Sequence[Character],
    options: BuildOptions = BuildOptions(),
    *,
    only: list[str] | None = None,
    speakers: dict[str, str] | None = None,
    extra: Iterable[str | Path] = (),
    progress: Callable[[Character], None] | None = None,
) -> BuildResult:
    """Build both splits in memory from a folder of character folders, or from characters already loaded (the
    character library's). ``extra`` ShareGPT files (chat exports) are appended to train."""
    if not 0 <= options.val_fraction < 1:
        raise HaruhiError(f"--val-fraction must be in [0, 1), not {options.val_fraction}")
    if isinstance(characters_dir, (str, Path)):
        characters = load_characters(characters_dir, only, speakers)
        where = str(characters_dir)
    else:
        characters, where = list(characters_dir), "the characters given"
    train: list[Sample] = []
    val: list[Sample] = []
    stats: list[CharacterStats] = []
    for character in characters:
        t, v, s = build_character(character, options)
        train += t
        val += v
        stats.append(s)
        if progress:
            progress(character)
    extra_samples = 0
    for path in extra:
        samples = load_sharegpt(path)
        train += samples
        extra_samples += len(samples)
    if not train and not val:
        raise HaruhiError(f"no usable scenes in {where}: nothing to write")
    return BuildResult(train, val, stats, extra_samples)


def write(result: BuildResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the two splits, ``dataset_info.json`` and ``stats.json`` atomically into ``out_dir``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HaruhiError(f"cannot create output folder {out}: {exc.strerror}") from exc
    paths = {
        TRAIN_NAME: out / f"{TRAIN_NAME}.json",
        VAL_NAME: out / f"{VAL_NAME}.json",
        "dataset_info": out / "dataset_info.json",
        "stats": out / "stats.json",
    }
    write_samples(paths[TRAIN_NAME], result.train)
    write_samples(paths[VAL_NAME], result.val)
    write_json(paths["dataset_info"], {name: dataset_info_entry(paths[name].name) for name in (TRAIN_NAME, VAL_NAME)})
    write_json(paths["stats"], result.report())
    return paths
