"""The model catalogue: ids and free repo ids resolve, fit is the engine's memory rule, an entry downloads from
a hub on 127.0.0.1 with progress (once), `haruhi models list` at 80 columns and `haruhi models get`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from typer.testing import CliRunner

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.memory_fit import kv_cache_bytes, memory_fit
from haruhi_tui.core.paths import models_dir
from haruhi_tui.services.model_catalogue import CATALOGUE, download, find_entry, resolve

QWEN = "qwen2.5-0.5b"


def serve(hub, entry_id: str = QWEN, size: int = 120_000) -> bytes:
    """Put the catalogue entry's repo and file on the local hub (random bytes stand in for the weights)."""
    entry = find_entry(entry_id)
    data = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes()
    hub.repos[entry.repo] = {entry.file: data, "README.md": b"# model\n"}
    return data


def gets(hub) -> list[str]:
    return [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]


def test_entries_are_unique_and_resolve_like_repo_ids():
    ids = [e.id for e in CATALOGUE]
    assert len(ids) == len(set(ids)) and len(CATALOGUE) >= 6
    assert {e.id for e in CATALOGUE if e.id.startswith("gpt-oss-20b")} >= {"gpt-oss-20b", "gpt-oss-20b-unsloth"}
    assert all(e.file.endswith(".gguf") and e.repo.count("/") == 1 and e.size_bytes > 0 for e in CATALOGUE)
    entry = find_entry("Qwen2.5-0.5B")
    assert resolve("Qwen2.5-0.5B") == (entry.repo, entry.file, entry)
    assert resolve("someone/some-GGUF") == ("someone/some-GGUF", None, None)
    assert resolve("someone/some-GGUF", "x.gguf") == ("someone/some-GGUF", "x.gguf", None)
    with pytest.raises(HaruhiError, match="no model 'qwen2.5-05b' in the catalogue: did you mean qwen2.5-0.5b"):
        resolve("qwen2.5-05b")
    with pytest.raises(HaruhiError, match="to fetch another file name the repo instead"):
        resolve(QWEN, "other.gguf")


def test_fit_is_the_engines_memory_rule():
    entry = find_entry("gpt-oss-20b")
    fit = entry.fit(4096)
    assert fit.need == entry.size_bytes + kv_cache_bytes(4096, 24, 8, 64, 64)
    assert fit == memory_fit(entry.size_bytes, kv_cache_bytes(4096, 24, 8, 64, 64))
    tiny = find_entry(QWEN).fit()
    assert tiny.fits and tiny.label() in ("yes (RAM)", "yes (GPU)")
    huge = dataclasses.replace(entry, size_bytes=2**50).fit()
    assert not huge.fits and huge.label().startswith("no: needs")
    assert "smaller quantization" in huge.problem("huge", 4096)


def test_a_catalogue_entry_downloads_with_progress_and_a_second_run_fetches_nothing(hub):
    data = serve(hub)
    seen: list[float | None] = []
    path = download(QWEN, progress=lambda fraction, message: seen.append(fraction))
    entry = find_entry(QWEN)
    assert path == models_dir() / entry.file == entry.local_path() and entry.downloaded()
    assert path.read_bytes() == data
    fractions = [f for f in seen if f is not None]
    assert len(fractions) > 2 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert len(gets(hub)) >= 1
    hub.requests.clear()
    assert download(QWEN) == path
    assert gets(hub) == []


def test_models_list_shows_the_catalogue_at_80_columns(hub, tmp_path):
    from haruhi_tui.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["models", "list", "--catalogue"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    for entry in CATALOGUE:
        assert entry.id in result.stdout
    assert "fits here" in result.stdout and "local models" not in result.stdout
    result = runner.invoke(app, ["models", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "local models" in result.stdout and "catalogue" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80

    data = serve(hub)
    result = runner.invoke(app, ["models", "get", QWEN])
    assert result.exit_code == 0, result.output
    target = find_entry(QWEN).local_path()
    assert result.stdout.strip() == str(target) and target.read_bytes() == data
    result = runner.invoke(app, ["models", "list", "--catalogue"], env={"COLUMNS": "80"})
    assert "downloaded" in result.stdout
    hub.requests.clear()
    assert runner.invoke(app, ["models", "get", QWEN]).exit_code == 0 and gets(hub) == []

    result = runner.invoke(app, ["models", "get", "qwen-nope"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: no model 'qwen-nope'")
