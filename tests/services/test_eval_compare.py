"""The eval comparison comes from the command line (`haruhi eval compare`), polled, never waited on."""

from __future__ import annotations

import time

import pytest

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import write_json
from haruhi_tui.services.eval_compare import Comparisons
from haruhi_tui.services.jobs import runnable

SCORES = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")


def write_metrics(folder, value: float) -> None:
    scores = {f"predict_{k}": value for k in SCORES}
    write_json(folder / "metrics.json", {**scores, "predict_samples_per_second": 1.0, "samples": 2,
                                         "scoring": "final", "per_character": {"春日": {**scores, "samples": 2}}})


def poll(comparisons: Comparisons, group: dict, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (data := comparisons.result(group)) is None:
        assert time.monotonic() < deadline, "haruhi eval compare did not finish"
        time.sleep(0.1)
    return data


def test_the_comparison_is_the_json_the_command_writes(tmp_path):
    root = tmp_path / "eval"
    runs = [root / "base", root / "ft"]
    group = {"outputs": [str(r) for r in runs], "names": ["base", "ft"], "root": str(root)}
    comparisons = Comparisons(runnable, tmp_path)
    write_metrics(runs[0], 1.0)
    assert comparisons.result(group) is None  # a run has no metrics yet: nothing started
    write_metrics(runs[1], 3.0)
    data = poll(comparisons, group)
    assert list(data["runs"]) == ["base", "ft"]
    assert data["overall"][0]["runs"] == {"base": 1.0, "ft": 3.0}
    assert data["per_character"][0]["character"] == "春日"
    assert (root / "comparison.md").is_file() and (root / "comparison.json").is_file()
    assert comparisons.result(group) == data  # done: asked again, the same answer without running again


def test_a_failing_compare_is_its_one_line_error(tmp_path):
    run = tmp_path / "eval" / "broken"
    write_json(run / "metrics.json", {"samples": 2})
    group = {"outputs": [str(run)], "names": ["broken"], "root": str(tmp_path / "eval")}
    comparisons = Comparisons(runnable, tmp_path)
    with pytest.raises(HaruhiError, match="haruhi eval compare failed: .*not a haruhi eval metrics file"):
        poll(comparisons, group)
    with pytest.raises(HaruhiError, match="not a haruhi eval metrics file"):  # asked again: the same message
        comparisons.result(group)
    assert not (tmp_path / "eval" / "comparison.json").exists()
