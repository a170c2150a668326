"""A SillyTavern chat with 春日 as SillyTavern 1.12 writes one (``chats/<character>/<name>.jsonl``): a header, a
greeting with two swipes, replies with swipes and reasoning, a narrator line and a hidden message."""

from __future__ import annotations

import json
from pathlib import Path

HEADER = {"user_name": "阿虚", "character_name": "春日", "create_date": "2025-05-02@19h41m07s",
          "chat_metadata": {"integrity": "0c1d4a6e-3b9f-4f57-8d2a-6e1f0b7c9a21", "note_prompt": "", "note_interval": 1,
                            "note_position": 1, "note_depth": 4, "note_role": 0,
                            "timedWorldInfo": {"sticky": {}, "cooldown": {}}, "tainted": True,
                            "lastInContextMessageId": 5}}


def _info(date: str, reasoning: str = "") -> dict:
    extra = {"api": "koboldcpp", "model": "gemma-3-270m"}
    if reasoning:
        extra["reasoning"] = reasoning
    return {"send_date": date, "gen_started": "2025-05-02T11:42:01.000Z", "gen_finished": "2025-05-02T11:42:03.000Z",
            "extra": extra}


MESSAGES = [
    {"name": "春日", "is_user": False, "is_system": False, "send_date": "May 2, 2025 7:41pm",
     "mes": "我对普通人没有兴趣！", "extra": {}, "swipe_id": 0,
     "swipes": ["我对普通人没有兴趣！", "你就是新来的团员？"],
     "swipe_info": [{"send_date": "May 2, 2025 7:41pm", "extra": {}},
                    {"send_date": "May 2, 2025 7:41pm", "extra": {}}]},
    {"name": "阿虚", "is_user": True, "is_system": False, "send_date": "May 2, 2025 7:42pm",
     "mes": "今天社团做什么？", "extra": {"isSmallSys": False}, "force_avatar": "User Avatars/kyon.png"},
    {"name": "春日", "is_user": False, "is_system": False, "send_date": "May 2, 2025 7:42pm",
     "mes": "去车站前找外星人！", "gen_started": "2025-05-02T11:42:01.000Z", "gen_finished": "2025-05-02T11:42:03.000Z",
     "extra": {"api": "koboldcpp", "model": "gemma-3-270m", "reasoning": "阿虚又在问废话。", "token_count": 9},
     "swipe_id": 2, "swipes": ["当然是开会！", "去找不可思议的事情。", "去车站前找外星人！"],
     "swipe_info": [_info("May 2, 2025 7:42pm", "简短回答。"), _info("May 2, 2025 7:42pm"),
                    _info("May 2, 2025 7:42pm", "阿虚又在问废话。")]},
    {"name": "阿虚", "is_user": True, "is_system": False, "send_date": "May 2, 2025 7:43pm",
     "mes": "又是外星人……", "extra": {}},
    {"name": "System", "is_user": False, "is_system": False, "send_date": "May 2, 2025 7:43pm",
     "mes": "夕阳照进了文艺部的活动室。", "extra": {"type": "narrator"}, "force_avatar": "img/five.png"},
    {"name": "春日", "is_user": False, "is_system": True, "send_date": "May 2, 2025 7:44pm",
     "mes": "（春日在白板上写字）", "extra": {"api": "koboldcpp", "model": "gemma-3-270m"}, "swipe_id": 0,
     "swipes": ["（春日在白板上写字）"], "swipe_info": [_info("May 2, 2025 7:44pm")]},
    {"name": "春日", "is_user": False, "is_system": False, "send_date": "May 2, 2025 7:44pm",
     "mes": "不许抱怨，这是团长命令！", "extra": {"api": "koboldcpp", "model": "gemma-3-270m", "reasoning": "强硬。"},
     "swipe_id": 0, "swipes": ["不许抱怨，这是团长命令！", "迟到的人请大家喝咖啡！"],
     "swipe_info": [_info("May 2, 2025 7:44pm", "强硬。"), _info("May 2, 2025 7:45pm", "罚款。")]},
]


def write_st_chat(path: Path) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in [HEADER, *MESSAGES]),
                    encoding="utf-8")
    return path
