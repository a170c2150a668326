"""The dataset builder on the real ChatHaruhi data, and ShareGPT / dataset_info loading."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from haruhi_tui.core.characters import load_character, parse_scene
from haruhi_tui.core.dataset import BuildOptions, build, scene_turns
from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.sharegpt import load_dataset_info, load_sharegpt, resolve_dataset

ROOT = Path(__file__).resolve().parents[2]


def haruhi_cli(*args, cwd=None, hash_seed="1"):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed}
    return subprocess.run([sys.executable, "-m", "haruhi_tui.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env)


@pytest.fixture(scope="module")
def built(tmp_path_factory, characters_dir):
    out = tmp_path_factory.mktemp("data")
    proc = haruhi_cli("data", "build", "--characters", str(characters_dir), "--out", str(out),
                      "--speaker", "Megumi=加藤")
    assert proc.returncode == 0, proc.stderr
    return out, proc


@pytest.mark.slow
def test_build_writes_three_files_and_a_report(built):
    out, proc = built
    for name in ("haruhi_train.json", "haruhi_val.json", "dataset_info.json", "stats.json"):
        assert (out / name).is_file()
    assert "春日" in proc.stdout and "total" in proc.stdout
    info = json.loads((out / "dataset_info.json").read_text())
    assert info == {
        name: {
            "file_name": f"{name}.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"},
        }
        for name in ("haruhi_train", "haruhi_val")
    }
    stats = json.loads((out / "stats.json").read_text())
    assert len(stats["characters"]) == 32
    assert stats["train_samples"] > 5000 and stats["val_samples"] > 1000


@pytest.mark.slow
def test_every_sample_has_system_and_ends_with_assistant_no_scene_in_both(built):
    out, _ = built
    train = json.loads((out / "haruhi_train.json").read_text())
    val = json.loads((out / "haruhi_val.json").read_text())
    for sample in train + val:
        conv = sample["conversations"]
        assert conv[0]["from"] == "system" and conv[0]["value"].strip()
        assert conv[-1]["from"] == "assistant" and conv[-1]["value"].strip()
        roles = [t["from"] for t in conv[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        # the sample's own scene is never retrieved into its prompt
        assert sample["scene"] not in conv[0]["value"]
    train_scenes = {s["scene"] for s in train}
    val_scenes = {s["scene"] for s in val}
    assert train_scenes and val_scenes and not (train_scenes & val_scenes)
    assert {s["character"] for s in val} >= {"春日", "韦小宝", "Harry", "加藤"}


@pytest.mark.slow
def test_own_scene_text_never_in_system_prompt(built, characters_dir):
    out, _ = built
    val = json.loads((out / "haruhi_val.json").read_text())
    haruhi = {s.scene_id: s for s in load_character(characters_dir / "haruhi").scenes}
    checked = 0
    for sample in val:
        scene = haruhi.get(sample["scene"])
        if scene is None:
            continue
        assert scene.text() not in sample["conversations"][0]["value"]
        checked += 1
    assert checked > 10


@pytest.mark.slow
def test_same_seed_is_byte_identical_other_seed_differs(built, characters_dir, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    # another process with another string-hash seed: nothing may depend on set or dict hash order
    assert haruhi_cli("data", "build", "-c", str(characters_dir), "-o", str(again), "--speaker", "Megumi=加藤",
                      hash_seed="2").returncode == 0
    for name in ("haruhi_train.json", "haruhi_val.json", "dataset_info.json", "stats.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes()
    other = build(characters_dir, BuildOptions(seed=7), only=["haruhi"])
    first = build(characters_dir, BuildOptions(seed=42), only=["haruhi"])
    assert {s.scene for s in other.val} != {s.scene for s in first.val}


def test_scene_turns_roles_and_narration():
    scene = parse_scene("x/1.txt", "春日:「我先说」\n旁白:下课了\n阿虚:「又怎么了」\n古泉:「嗯」\n"
                                   "春日:「去社团！」\n春日:「马上！」\n阿虚:「好吧」")
    turns = scene_turns(scene, "春日")
    assert [(t.role, t.text) for t in turns] == [
        ("user", "（下课了）\n阿虚:「又怎么了」\n古泉:「嗯」"),
        ("assistant", "去社团！\n马上！"),
    ]


@pytest.mark.slow
def test_built_files_load_back_through_both_loaders(built):
    out, _ = built
    val = load_sharegpt(out / "haruhi_val.json")
    via_info = load_dataset_info(out, "haruhi_val")
    assert len(val) == len(via_info) and val[0].target == via_info[0].target
    assert len(resolve_dataset(f"{out}:haruhi_train")) > 0


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "empty"),
        ('{"a": 1}', "JSON list"),
        ("[{\"conversations\": [{\"from\": \"user\", \"value\": \"hi\"}]}]",
         "sample 0: the sample does not end with an assistant turn"),
        ("[{\"conversations\": [{\"from\": \"robot\", \"value\": \"hi\"}]}]", "sample 0, turn 0: unknown role"),
        ("[{\"conversations\": []}]", "sample 0: missing or empty"),
        ("[{\"conversations\": [{\"from\": \"user\"}]}]", "needs 'from' and 'value'"),
        ("[{\"conversations\": [{\"from\": \"assistant\", \"value\": \"x\"}]}]", "must alternate"),
        ("[{", "not valid JSON"),
    ],
)
def test_bad_sharegpt_names_file_sample_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(HaruhiError) as err:
        load_sharegpt(path)
    assert message in str(err.value) and "bad.json" in str(err.value)


def test_human_gpt_aliases_and_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    sample = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    path.write_text(json.dumps(sample) + "\n")
    (sample,) = load_sharegpt(path)
    assert [m["role"] for m in sample.messages] == ["user", "assistant"]


@pytest.mark.slow
def test_cli_errors_are_one_line_and_nonzero(tmp_path, characters_dir):
    proc = haruhi_cli("data", "build", "-c", str(tmp_path / "missing"), "-o", str(tmp_path / "o"))
    assert proc.returncode == 1 and proc.stderr.startswith("error: characters folder not found")
    assert "Traceback" not in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = haruhi_cli("data", "build", "-c", str(characters_dir), "--only", "haruhi", "-o", str(blocker / "sub"))
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = haruhi_cli("data", "check", str(tmp_path / "none.json"))
    assert proc.returncode == 1 and "not found" in proc.stderr


def test_extra_sharegpt_files_merge_into_train(tmp_path, characters_dir):
    extra = tmp_path / "chat.json"
    turns = [{"from": "system", "value": "s"}, {"from": "user", "value": "阿虚:「嗨」"},
             {"from": "assistant", "value": "哼"}]
    extra.write_text(json.dumps([{"conversations": turns, "character": "春日"}], ensure_ascii=False))
    result = build(characters_dir, BuildOptions(), only=["haruhi"], extra=[extra])
    assert result.extra_samples == 1 and result.train[-1].target == "哼"


def test_tiny_history_budget_still_starts_every_sample_with_a_user_turn(characters_dir):
    from haruhi_tui.core.persona import PromptBudget

    result = build(characters_dir, BuildOptions(budget=PromptBudget(history=30)), only=["haruhi", "Harry"])
    for sample in result.train + result.val:
        assert [m["role"] for m in sample.messages[:2]] == ["system", "user"]
        assert sample.messages[-1]["role"] == "assistant"


@pytest.mark.slow
def test_no_validation_reply_is_a_training_target(built):
    """ChatHaruhi's scene files overlap; the split keeps scenes that share dialogue together, so no validation
    reply (12+ characters) is a training target of the same character, with or without the same user turn."""
    out, proc = built
    train = json.loads((out / "haruhi_train.json").read_text())
    val = json.loads((out / "haruhi_val.json").read_text())
    replies, exchanges = set(), set()
    for sample in train:
        chat = sample["conversations"][1:]
        for user, reply in zip(chat[::2], chat[1::2]):
            replies.add((sample["character"], reply["value"]))
            exchanges.add((sample["character"], user["value"], reply["value"]))
    checked = [s for s in val if len(s["conversations"][-1]["value"].strip()) >= 12]
    assert len(checked) > 1000
    assert [s for s in checked if (s["character"], s["conversations"][-1]["value"]) in replies] == []
    assert [s for s in checked if (s["character"], s["conversations"][-2]["value"], s["conversations"][-1]["value"])
            in exchanges] == []
    stats = json.loads((out / "stats.json").read_text())
    assert stats["val_overlap"] == {"min_reply_chars": 12, "val_replies": len(checked), "in_train": 0, "percent": 0.0,
                                    "same_exchange_in_train": 0}
    assert abs(stats["split"]["val_share"] - 0.1) < 0.005 and stats["split"]["drift"] is None
    assert stats["split"]["largest_group"] > 1  # overlapping scenes were found and kept together
    assert f"12+ characters also in training: 0 of {len(checked):,} (0.00 %)" in " ".join(proc.stdout.split())


@pytest.mark.slow
def test_prompts_never_hold_the_dialogue_they_are_scored_on(built, characters_dir):
    """A validation sample's prompt holds no scene of its own dialogue; training prompts hold no validation scene."""
    out, _ = built
    val = json.loads((out / "haruhi_val.json").read_text())
    long_replies = [s for s in val if len(s["conversations"][-1]["value"]) >= 30]
    assert len(long_replies) > 500
    assert [s["scene"] for s in long_replies if s["conversations"][-1]["value"] in s["conversations"][0]["value"]] == []
    haruhi = {s.scene_id: s for s in load_character(characters_dir / "haruhi").scenes}
    val_texts = {haruhi[s["scene"]].text() for s in val if s["scene"] in haruhi}
    train_prompts = [s["conversations"][0]["value"] for s in json.loads((out / "haruhi_train.json").read_text())
                     if s["scene"] in haruhi]
    assert len(val_texts) > 10 and len(train_prompts) > 100
    assert not any(text in prompt for text in val_texts for prompt in train_prompts)


def _character(root: Path, scenes: dict[str, str]) -> Path:
    folder = root / "xiaoming"
    (folder / "texts").mkdir(parents=True)
    (folder / "system_prompt.txt").write_text("你正在扮演小明，一个爱讲冷笑话的高中生。请保持角色。", encoding="utf-8")
    for name, text in scenes.items():
        (folder / "texts" / name).write_text(text, encoding="utf-8")
    return root


def test_scenes_that_share_dialogue_stay_in_one_split(tmp_path):
    """Scene 2k and 2k+1 are two excerpts of one dialogue (they share two lines); every seed keeps them together."""
    scenes = {}
    for k in range(10):
        shared = (f"小红:「第{k}段对话：你昨天到底去哪里了？大家都在找你。」\n"
                  f"小明:「第{k}段对话：我去图书馆研究怎么讲冷笑话了。」\n")
        scenes[f"{2 * k:02d}.txt"] = f"小红:「喂，小明！这是第{k}次了。」\n小明:「干嘛？」\n" + shared
        scenes[f"{2 * k + 1:02d}.txt"] = shared + f"小红:「第{k}次了，真拿你没办法。」\n小明:「那就听我讲一个吧。」\n"
    chars = _character(tmp_path, scenes)
    for seed in range(6):
        result = build(chars, BuildOptions(seed=seed, val_fraction=0.5))
        val_scenes = {s.scene for s in result.val}
        assert len(val_scenes) == 10 and not val_scenes & {s.scene for s in result.train}
        for k in range(10):
            pair = {f"xiaoming/{2 * k:02d}.txt", f"xiaoming/{2 * k + 1:02d}.txt"}
            assert pair <= val_scenes or not pair & val_scenes
        for sample in result.val:  # the other excerpt of the same dialogue is never retrieved into the prompt
            k = int(sample.scene[-6:-4]) // 2
            assert f"第{k}段对话" not in sample.system
        assert result.overlap.checked > 0 and result.overlap.replies == 0
        assert result.stats[0].scene_groups == 10 and result.stats[0].largest_group == 2
        assert result.report()["split"]["drift"] is None


def test_validation_share_drift_is_reported(tmp_path):
    """Three excerpts of one dialogue and one other scene: half the scenes (2) cannot go to validation."""
    shared = "小红:「你昨天到底去哪里了？大家都在找你，老师也在找你。」\n小明:「我去图书馆研究怎么讲冷笑话了。」\n"
    chars = _character(tmp_path, {"a.txt": shared, "b.txt": "小红:「早」\n" + shared, "c.txt": shared + "小红:「哦」\n",
                                  "d.txt": "小红:「今天吃什么？」\n小明:「吃冷笑话。」\n"})
    result = build(chars, BuildOptions(seed=3, val_fraction=0.5))
    (stats,) = result.stats
    assert (stats.val_scenes_target, stats.val_scenes_split, stats.largest_group) == (2, 1, 3)
    assert any("1 of 4 scenes in validation instead of 2" in w for w in stats.warnings)
    report = result.report()
    assert report["split"]["val_share"] == 0.25 and "xiaoming 1 instead of 2" in report["split"]["drift"]
