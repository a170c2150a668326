"""ShareGPT datasets and LLaMA-Factory's ``dataset_info.json``: read, validate, write.

A sample is ``{"conversations": [{"from": "system"|"user"|"assistant", "value": …}, …]}``; we add
``character`` and ``scene`` keys (LLaMA-Factory ignores keys it is not told about) so evaluation can
report per character and tests can prove that no scene is in two splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import HaruhiError
from .fsutil import decode_utf8, parse_json, read_bytes, read_json, write_json

ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}

#: The tags LLaMA-Factory needs to read our files (see its data/README).
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


@dataclass
class Sample:
    """One validated sample: messages in order (system first if any), plus optional metadata."""

    messages: list[dict[str, str]]
    character: str | None = None
    scene: str | None = None

    @property
    def system(self) -> str:
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else ""

    @property
    def target(self) -> str:
        """The last assistant message: the label in evaluation."""
        return self.messages[-1]["content"] if self.messages and self.messages[-1]["role"] == "assistant" else ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "conversations": [{"from": m["role"], "value": m["content"]} for m in self.messages],
        }
        if self.character is not None:
            data["character"] = self.character
        if self.scene is not None:
            data["scene"] = self.scene
        return data


def dataset_info_entry(file_name: str) -> dict[str, Any]:
    """The entry a LLaMA-Factory user adds to ``dataset_info.json`` for one of our files."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations"},
        "tags": dict(SHAREGPT_TAGS),
    }


def write_samples(path: str | Path, samples: Iterable[Sample]) -> None:
    write_json(path, [s.to_json() for s in samples], indent=1)


def parse_sample(raw: Any, where: str, tags: dict[str, str] | None = None, messages_key: str = "conversations",
                 *, require_target: bool = True) -> Sample:
    """Validate one raw sample; errors say ``where`` (file and index) and what is wrong."""
    tags = tags or SHAREGPT_TAGS
    role_tag, content_tag = tags.get("role_tag", "from"), tags.get("content_tag", "value")
    role_map = dict(ROLE_ALIASES)
    for ours, key in (("user", "user_tag"), ("assistant", "assistant_tag"), ("system", "system_tag")):
        if key in tags:
            role_map[tags[key]] = ours
    if not isinstance(raw, dict):
        raise HaruhiError(f"{where}: a sample must be a JSON object, not {type(raw).__name__}")
    turns = raw.get(messages_key)
    if not isinstance(turns, list) or not turns:
        raise HaruhiError(f"{where}: missing or empty '{messages_key}' list")
    messages: list[dict[str, str]] = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_tag not in turn or content_tag not in turn:
            raise HaruhiError(f"{where}, turn {j}: needs '{role_tag}' and '{content_tag}'")
        role = role_map.get(str(turn[role_tag]))
        if role is None:
            raise HaruhiError(f"{where}, turn {j}: unknown role {turn[role_tag]!r} "
                              "(expected system, user or assistant)")
        content = turn[content_tag]
        if not isinstance(content, str):
            raise HaruhiError(f"{where}, turn {j}: '{content_tag}' must be a string")
        if role == "system" and j != 0:
            raise HaruhiError(f"{where}, turn {j}: a system turn may only come first")
        messages.append({"role": role, "content": content})
    chat = [m for m in messages if m["role"] != "system"]
    for j, m in enumerate(chat):
        expected = "user" if j % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise HaruhiError(f"{where}: turns must alternate user/assistant starting with user "
                              f"(turn {j} is {m['role']})")
    if require_target and (not chat or chat[-1]["role"] != "assistant"):
        raise HaruhiError(f"{where}: the sample does not end with an assistant turn")
    if require_target and not chat[-1]["content"].strip():
        raise HaruhiError(f"{where}: the last assistant turn is empty")
    character = raw.get("character") if isinstance(raw.get("character"), str) else None
    scene = raw.get("scene") if isinstance(raw.get("scene"), str) else None
    return Sample(messages, character, scene)


def read_jsonl(path: str | Path, what: str = "dataset") -> list[Any]:
    """The rows of a JSON Lines file; a bad line (not UTF-8, cut short, not JSON) is an error naming it."""
    p = Path(path)
    rows = []
    for n, raw in enumerate(read_bytes(p, what).split(b"\n"), 1):
        where = f"{p}, line {n}"
        line = decode_utf8(raw, where)
        if line.strip():
            rows.append(parse_json(line, where))
    return rows


def load_sharegpt(path: str | Path, *, tags: dict[str, str] | None = None, messages_key: str = "conversations",
                  require_target: bool = True) -> list[Sample]:
    """Load and validate a ShareGPT JSON (a list) or JSONL file."""
    p = Path(path)
    rows = read_jsonl(p) if p.suffix == ".jsonl" else read_json(p, "dataset")
    if not isinstance(rows, list):
        raise HaruhiError(f"{p}: a ShareGPT dataset is a JSON list of samples")
    if not rows:
        raise HaruhiError(f"{p}: the dataset is empty")
    return [parse_sample(r, f"{p}, sample {i}", tags, messages_key, require_target=require_target)
            for i, r in enumerate(rows)]


def load_dataset_info(info_path: str | Path, name: str, *, require_target: bool = True) -> list[Sample]:
    """Load dataset ``name`` through a LLaMA-Factory ``dataset_info.json`` (sharegpt formatting)."""
    info_file = Path(info_path)
    if info_file.is_dir():
        info_file = info_file / "dataset_info.json"
    info = read_json(info_file, "dataset_info.json")
    if not isinstance(info, dict) or name not in info:
        known = ", ".join(sorted(info)) if isinstance(info, dict) else "none"
        raise HaruhiError(f"{info_file}: no dataset named {name!r} (known: {known})")
    entry = info[name]
    if not isinstance(entry, dict):
        raise HaruhiError(f"{info_file}: dataset {name!r} must be a JSON object with file_name, formatting, "
                          f"columns and tags, not {type(entry).__name__}")
    if entry.get("formatting", "alpaca") != "sharegpt":
        raise HaruhiError(f"{info_file}: dataset {name!r} is not in sharegpt formatting (only sharegpt is supported)")
    file_name = entry.get("file_name")
    if file_name is None:
        raise HaruhiError(f"{info_file}: dataset {name!r} has no file_name (hub datasets cannot be fetched offline)")
    if not isinstance(file_name, str) or not file_name:
        raise HaruhiError(f"{info_file}: dataset {name!r}: file_name must be a file name, not {file_name!r}")
    columns, entry_tags = entry.get("columns", {}), entry.get("tags", {})
    for key, value in (("columns", columns), ("tags", entry_tags)):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise HaruhiError(f"{info_file}: dataset {name!r}: '{key}' must be an object of strings")
    messages_key = columns.get("messages", "conversations")
    return load_sharegpt(info_file.parent / file_name, tags={**SHAREGPT_TAGS, **entry_tags},
                         messages_key=messages_key, require_target=require_target)


def resolve_dataset(spec: str, *, require_target: bool = True) -> list[Sample]:
    """Load a dataset from ``file.json``/``file.jsonl`` or ``dataset_info.json:NAME`` / ``DIR:NAME``."""
    path = Path(spec)
    try:
        if not path.exists() and ":" in spec:
            info, name = spec.rsplit(":", 1)
            return load_dataset_info(info, name, require_target=require_target)
        if path.is_dir():
            raise HaruhiError(f"{spec} is a folder: pass a ShareGPT file, or FOLDER:NAME for a dataset_info.json entry")
    except OSError as exc:  # a name too long, a folder that cannot be searched, ...
        raise HaruhiError(f"cannot read {spec}: {exc.strerror or exc}") from exc
    return load_sharegpt(path, require_target=require_target)
