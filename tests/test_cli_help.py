"""One command-line style for haruhi, haruhi-tui and haruhi-convert: -h and --help on every command, help that
reads in an 80-column terminal (no line past 80 columns, no cut option names, prose re-flowed rather than
broken at another width, no value type after flags), and the many `haruhi train` settings in panels."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

WIDTH = 80


def _apps():
    from convert.cli import app as convert_app
    from haruhi_tui.app.main import app as tui_app
    from haruhi_tui.cli import app as haruhi_app

    return {"haruhi": haruhi_app, "haruhi-tui": tui_app, "haruhi-convert": convert_app}


def _command_paths() -> list[tuple[str, list[str], set[str]]]:
    """Every command of the three apps, as (app name, arguments up to the command, its parameters' metavars)."""
    out = []
    for name, app in _apps().items():
        todo = [([], typer.main.get_command(app))]
        while todo:
            path, command = todo.pop()
            out.append((name, path, {p.metavar for p in command.params if p.metavar}))
            for sub, child in sorted(getattr(command, "commands", {}).items()):
                todo.append(([*path, sub], child))
    return out


def _help(app_name: str, args: list[str], flag: str = "-h") -> str:
    result = CliRunner().invoke(_apps()[app_name], [*args, flag], env={"COLUMNS": str(WIDTH), "NO_COLOR": "1"})
    assert result.exit_code == 0, f"{app_name} {' '.join(args)} {flag}: {result.output}"
    return result.output


def _prose(text: str) -> list[list[str]]:
    """The paragraphs of the help's description (before the first panel), each as its lines."""
    head = text.split("╭", 1)[0]
    paragraphs = [[line.strip() for line in block.splitlines() if line.strip()]
                  for block in re.split(r"\n\s*\n", head)]
    return [p for p in paragraphs if p and not p[0].startswith(("Usage:", "Examples:"))]


def test_every_command_has_dash_h_and_help_that_fits_80_columns():
    paths = _command_paths()
    names = {(name, " ".join(path)) for name, path, _ in paths}
    assert {("haruhi", "train"), ("haruhi", "data build"), ("haruhi", "eval"), ("haruhi-tui", ""),
            ("haruhi-convert", "")} <= names
    for name, path, metavars in paths:
        text = _help(name, path)
        where = f"{name} {' '.join(path)}".strip()
        assert text == _help(name, path, "--help"), where
        assert "-h" in text and "Usage:" in text, where
        assert "<bool>" not in text, f"{where}: a flag shows a value type"
        for line in text.splitlines():
            assert len(line) <= WIDTH, f"{where}: {line!r}"
            if line.startswith("│"):  # a cell cut short ends in "…" (a metavar may be written with one)
                cut = [word for word in line.split() if word.endswith("…") and word not in metavars]
                assert not cut, f"{where}: cut off: {line!r}"
        for paragraph in _prose(text):  # re-flowed: a line ends early only where the next word would not fit
            for line, following in zip(paragraph, paragraph[1:]):
                assert len(line) + 1 + len(following.split()[0]) > WIDTH - 2, f"{where}: ragged: {line!r}"


def test_train_settings_come_in_panels_and_switches_read_as_flags():
    text = _help("haruhi", ["train"])
    for panel in ("Run", "Multi-node", "Model", "Data", "LoRA", "Training", "Output"):
        assert f"─ {panel} ─" in text, panel
    flat = " ".join(text.replace("│", " ").split())
    assert "--no-gradient-checkpointing" in flat and "--load-in-4bit" in flat
    assert "[default: 16]" in flat and "[default: auto; --no-gradient-checkpointing turns it off]" in flat
    assert "[default: false; --no-load-in-4bit turns it off]" in flat


@pytest.mark.parametrize("flags, expected", [
    ([], "off"), (["--no-gradient-checkpointing"], "off"), (["--gradient-checkpointing"], "on"),
    (["--load-in-4bit"], True), (["--no-load-in-4bit"], False), ([], True),
])
def test_both_ways_of_a_switch_still_work(flags, expected, tmp_path):
    """Each switch lists one flag in the help; both of its flags work, over a config file's value."""
    import tomllib

    from haruhi_tui.cli import app

    name = "load_in_4bit" if "4bit" in " ".join(flags) or expected is True else "gradient_checkpointing"
    config = tmp_path / "c.toml"
    config.write_text("[model]\ngradient_checkpointing = false\nload_in_4bit = true\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--config", str(config), *flags, "--print-config"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.output)["model"][name] == expected
    both = CliRunner().invoke(app, ["train", "--load-in-4bit", "--no-load-in-4bit", "--print-config"])
    assert both.exit_code == 1 and "together" in both.output


def test_the_data_build_table_reads_at_80_columns(tmp_path):
    from tiny_characters import make_characters

    from haruhi_tui.cli import app

    characters = make_characters(tmp_path / "characters")
    result = CliRunner().invoke(app, ["data", "build", "-c", str(characters), "-o", str(tmp_path / "data")],
                                env={"COLUMNS": str(WIDTH), "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= WIDTH for line in lines), result.output
    assert "…" not in result.output, result.output  # no column cut short
    row = next(line for line in lines if "xiaoming" in line)
    assert "小明" in row and "/" in row  # the character, then train/val pairs on one row
    header = " ".join(lines)
    for column in ("scenes", "skipped", "samples", "train/val", "turns", "chars"):
        assert column in header, column
