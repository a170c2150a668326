"""A card-like character folder, written the way the card importer writes one: a role prompt with
``{{char}}``/``{{user}}`` macros, two short scenes, ``character.json`` (the user persona, a depth prompt,
post-history instructions) and ``lorebook.json`` (a card's ``character_book``, V2 shape with SillyTavern's
extensions)."""

from __future__ import annotations

import json
from pathlib import Path

from haruhi_tui.core.character_manifest import CharacterManifest, DepthPrompt, write_manifest

ROLE_PROMPT = ("你正在扮演{{char}}。{{char}}是北高一年级学生、SOS团团长，自我中心又精力充沛。"
               "{{user}}是{{char}}的同班同学。")
LORE_DIR = Path(__file__).parent / "lore"
ST_WORLD_INFO = LORE_DIR / "haruhi_world_info.json"


def book_entry(i: int, keys: list[str], content: str, name: str, **extra) -> dict:
    """A character_book entry as SillyTavern exports one inside a card."""
    extensions = {"position": 1, "exclude_recursion": False, "display_index": i, "probability": 100,
                  "useProbability": True, "depth": 4, "selectiveLogic": 0, "group": "", "group_override": False,
                  "group_weight": 100, "prevent_recursion": False, "delay_until_recursion": False, "scan_depth": None,
                  "match_whole_words": None, "use_group_scoring": False, "case_sensitive": None, "automation_id": "",
                  "role": 0, "vectorized": False, "sticky": 0, "cooldown": 0, "delay": 0}
    extensions.update(extra.pop("extensions", {}))
    entry = {"keys": keys, "secondary_keys": [], "content": content, "enabled": True, "insertion_order": 100,
             "case_sensitive": False, "name": name, "priority": 10, "id": i, "comment": name, "selective": False,
             "constant": False, "position": "after_char", "extensions": extensions}
    entry.update(extra)
    return entry


CHARACTER_BOOK = {
    "name": "春日的世界", "description": "", "scan_depth": 2, "token_budget": 400, "recursive_scanning": False,
    "extensions": {},
    "entries": [
        book_entry(0, ["棒球"], "{{char}}带SOS团参加过社区棒球大赛，还让{{user}}当了四棒。", "棒球大赛"),
        book_entry(1, ["长门"], "长门有希在活动室角落读书，其实是资讯统合思念体制造的人形终端。", "长门的秘密",
                   secondary_keys=["书", "读书"], selective=True, insertion_order=110),
        book_entry(2, ["孤岛"], "夏天SOS团去古泉亲戚的孤岛别墅合宿。", "孤岛合宿", insertion_order=90,
                   extensions={"position": 4, "depth": 1}),
    ],
}


def make_card_character(root: Path, *, lorebook: dict | None = CHARACTER_BOOK) -> Path:
    folder = root / "haruhi_card"
    (folder / "texts").mkdir(parents=True)
    (folder / "system_prompt.txt").write_text(ROLE_PROMPT + "\n", encoding="utf-8")
    (folder / "texts" / "card_0.txt").write_text("阿虚:「……」\n春日:「我对普通人没兴趣！」\n", encoding="utf-8")
    (folder / "texts" / "card_1.txt").write_text("阿虚:「今天去哪？」\n春日:「车站前集合，去找不可思议的事情！」\n",
                                                encoding="utf-8")
    write_manifest(folder, CharacterManifest(
        name="春日", user_name="阿虚", user_description="{{user}}是{{char}}的同班同学，爱吐槽，被拉进了SOS团。",
        depth_prompt=DepthPrompt("{{char}}说话任性而有活力。", 2),
        post_history_instructions="只用一两句话回答{{user}}。",
    ))
    if lorebook is not None:
        (folder / "lorebook.json").write_text(json.dumps(lorebook, ensure_ascii=False, indent=2), encoding="utf-8")
    return folder
