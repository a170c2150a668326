"""Build ``haruhi_train`` / ``haruhi_val`` from ChatHaruhi character folders (the ChatHaruhi recipe).

Each scene becomes turns: the character's lines are assistant turns, everybody else's lines are user
turns (who speaks is kept: ``阿虚:「…」``), narration and headings are context folded into the next
user turn. The system message comes from the shared :class:`~haruhi_tui.core.persona.PersonaBuilder`
(role prompt + other scenes retrieved for the conversation, never the sample's own dialogue).

Scenes are split per character, deterministically for a seed, by groups of scenes that share dialogue
(:mod:`~haruhi_tui.core.scene_split`), so no exchange is in both splits; training prompts never retrieve
validation scenes. Training samples are whole scenes (windows of ``max_turns``; every reply carries loss
once); validation samples are one per reply (history, then the line to predict), as evaluation needs.
The four output files are replaced as a set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

from .characters import Character, Scene, format_line, load_characters
from .errors import HaruhiError
from .fsutil import replace_together, write_json
from .persona import PersonaBuilder, PromptBudget, Turn
from .prompt_format import Conversation, to_messages
from .scene_split import Overlap, measure_overlap, overlap_groups, split_groups
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
    scene_groups: int = 0  # groups of scenes that share dialogue (a scene alone is a group of one)
    largest_group: int = 0
    val_scenes_target: int = 0  # the scenes --val-fraction asks for
    val_scenes_split: int = 0  # the scenes the split put in validation (val_scenes: those with usable replies)
    val_replies_checked: int = 0  # validation replies of at least MIN_SHARED_CHARS characters
    val_replies_in_train: int = 0  # ... that are also a training target of this character
    warnings: list[str] = field(default_factory=list)


@dataclass
class BuildResult:
    train: list[Sample]
    val: list[Sample]
    stats: list[CharacterStats]
    extra_samples: int = 0
    val_fraction: float = BuildOptions.val_fraction
    overlap: Overlap = field(default_factory=Overlap)

    def drift(self) -> str | None:
        """Where keeping shared dialogue together moved a character's validation share off ``val_fraction``."""
        off = [f"{s.folder} {s.val_scenes_split} instead of {s.val_scenes_target}" for s in self.stats
               if s.val_scenes_split != s.val_scenes_target]
        if not off:
            return None
        return ("validation scenes differ from --val-fraction where scenes that share dialogue are kept together: "
                + ", ".join(off))

    def report(self) -> dict:
        scenes = sum(s.scenes for s in self.stats)
        val_scenes = sum(s.val_scenes_split for s in self.stats)
        return {
            "train_samples": len(self.train),
            "val_samples": len(self.val),
            "extra_samples": self.extra_samples,
            "split": {
                "val_fraction": self.val_fraction,
                "scenes": scenes,
                "val_scenes": val_scenes,
                "val_share": round(val_scenes / scenes, 4) if scenes else 0.0,
                "scene_groups": sum(s.scene_groups for s in self.stats),
                "largest_group": max((s.largest_group for s in self.stats), default=0),
                "drift": self.drift(),
            },
            "val_overlap": self.overlap.report(),
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


def _sample(builder: PersonaBuilder, history: list[Turn], target: Turn, scene: Scene, exclude: list[str]) -> Sample:
    """``history`` ends with the user turn ``target`` answers; that turn is kept whatever the budget.
    ``exclude``: scenes never retrieved into the prompt (the scene's own dialogue, wherever it is)."""
    prompt = builder.build(history[:-1], history[-1], query=_query(history), exclude_scene_ids=exclude)
    target = Turn(target.role, prompt.resolve(target.text), target.speaker)  # a card's "{{user}}!" as chat says it
    conv = Conversation(prompt.system, (*prompt.turns, target), prompt.character)
    return Sample(to_messages(conv), builder.character.name, scene.scene_id)


def build_character(character: Character, options: BuildOptions) -> tuple[list[Sample], list[Sample], CharacterStats]:
    stats = CharacterStats(character.folder, character.name, len(character.scenes), character.skipped_scenes,
                           warnings=list(character.warnings))
    builder = PersonaBuilder(character, options.budget)
    scenes = character.scenes
    ids = [scene.scene_id for scene in scenes]
    all_turns = [scene_turns(scene, character.name) for scene in scenes]
    split = split_groups(character, overlap_groups(scenes, all_turns), options.seed, options.val_fraction)
    group_of = {i: group for group in split.groups for i in group}
    val_ids = [ids[i] for i in split.val]
    stats.scene_groups = len(split.groups)
    stats.largest_group = max(map(len, split.groups), default=0)
    stats.val_scenes_target, stats.val_scenes_split = split.val_target, len(split.val)
    if len(split.val) != split.val_target:
        stats.warnings.append(f"{character.folder}: {len(split.val)} of {len(scenes)} scenes in validation instead "
                              f"of {split.val_target}: scenes that share dialogue stay in one split")
    out: dict[str, list[Sample]] = {"train": [], "val": []}
    for side, indices, unit in (("train", split.train, options.train_unit), ("val", split.val, options.val_unit)):
        used = 0
        for i in indices:
            scene, turns = scenes[i], all_turns[i]
            if not any(t.role == "assistant" and len(t.text.strip()) >= options.min_reply_chars for t in turns):
                stats.skipped_scenes += 1
                continue
            used += 1
            stats.turns += len(turns)
            stats.text_chars += sum(len(t.text) for t in turns)
            exclude = [ids[j] for j in group_of[i]] + (val_ids if side == "train" else [])
            if unit == "scene":
                for window in _windows(turns, options.max_turns):
                    out[side].append(_sample(builder, window[:-1], window[-1], scene, exclude))
            else:
                for k in range(1, len(turns), 2):
                    if len(turns[k].text.strip()) < options.min_reply_chars:
                        continue
                    history = turns[max(0, k + 1 - options.max_turns) : k]
                    out[side].append(_sample(builder, history, turns[k], scene, exclude))
        if side == "train":
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
    overlap = measure_overlap(train, val)
    for s in stats:
        mine = overlap.get(s.name, Overlap())
        s.val_replies_checked, s.val_replies_in_train = mine.checked, mine.replies
    return BuildResult(train, val, stats, extra_samples, options.val_fraction, overlap[None])


def write(result: BuildResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the two splits, ``dataset_info.json`` and ``stats.json`` into ``out_dir``, replacing an earlier
    build's four files as a set: an error or Ctrl-C at any point leaves the old set or the new one."""
    out = Path(out_dir)
    names = {TRAIN_NAME: f"{TRAIN_NAME}.json", VAL_NAME: f"{VAL_NAME}.json", "dataset_info": "dataset_info.json",
             "stats": "stats.json"}
    with replace_together(out, names.values()) as stage:
        write_samples(stage / names[TRAIN_NAME], result.train)
        write_samples(stage / names[VAL_NAME], result.val)
        info = {name: dataset_info_entry(names[name]) for name in (TRAIN_NAME, VAL_NAME)}
        write_json(stage / names["dataset_info"], info)
        write_json(stage / names["stats"], result.report())
    return {key: out / name for key, name in names.items()}
