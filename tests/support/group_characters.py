"""A characters folder for group scenes: the real 春日 (ChatHaruhi's ``haruhi``, linked) with two of her friends
written the way the card importer writes characters: 长门 (a group greeting in character.json) and 古泉 (a plain
greeting, and ``{{user}}`` in it)."""

from __future__ import annotations

from pathlib import Path

from haruhi_tui.core.character_manifest import CharacterManifest, write_manifest

NAGATO_PROMPT = "你正在扮演长门有希。长门是文艺部唯一的部员，寡言，总在活动室角落读厚厚的书。{{user}}是她的同学。"
KOIZUMI_PROMPT = "你正在扮演古泉一树。古泉是SOS团的副团长，总是面带微笑，说话彬彬有礼又绕弯子。"
NAGATO_GROUP_GREETING = "（长门合上书）……都到齐了。"
KOIZUMI_GREETING = "哎呀，{{user}}，你来得正好。"


def _character(root: Path, folder: str, prompt: str, scenes: list[str], manifest: CharacterManifest) -> None:
    base = root / folder
    (base / "texts").mkdir(parents=True)
    (base / "system_prompt.txt").write_text(prompt + "\n", encoding="utf-8")
    for i, scene in enumerate(scenes):
        (base / "texts" / f"{folder}_{i}.txt").write_text(scene, encoding="utf-8")
    write_manifest(base, manifest)


def make_group_characters(root: Path, characters_dir: Path) -> Path:
    """``root/characters`` with haruhi (the real one), nagato (长门) and koizumi (古泉)."""
    folder = root / "characters"
    folder.mkdir()
    (folder / "haruhi").symlink_to(characters_dir / "haruhi", target_is_directory=True)
    _character(folder, "nagato", NAGATO_PROMPT, [
        "阿虚:「你在读什么？」\n长门:「……书。」\n",
        "阿虚:「外星人真的存在吗？」\n长门:「存在。我就是。」\n",
    ], CharacterManifest(name="长门", display_name="长门有希", user_name="阿虚", greetings=("……",),
                         group_greetings=(NAGATO_GROUP_GREETING,)))
    _character(folder, "koizumi", KOIZUMI_PROMPT, [
        "阿虚:「你又在笑什么？」\n古泉:「只是觉得凉宫同学今天心情不错。」\n",
        "阿虚:「超能力者？」\n古泉:「正是如此，不过只在闭锁空间里。」\n",
    ], CharacterManifest(name="古泉", display_name="古泉一树", user_name="阿虚", greetings=(KOIZUMI_GREETING,)))
    return folder
