"""One command-line style for ``haruhi``, ``haruhi-tui`` and ``haruhi-convert``: typer with rich help panels,
``-h`` as well as ``--help`` everywhere, and help that reads well in an 80-column terminal.

Use :func:`cli_app` for every typer app (and its sub-apps). Help (``help=`` or a docstring) wrapped at any
width in the source is re-flowed into paragraphs that rich wraps to the terminal (:func:`help_text`); a
paragraph that starts with ``\\b`` keeps its lines (examples). Flags show no value type (typer prints
``<bool>`` after ``--help`` and every flag, as if they took a value).
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def help_text(text: str) -> str:
    """Paragraphs joined into single lines (``\\b`` paragraphs kept line by line), rich markup escaped."""
    out = []
    for paragraph in text.strip().split("\n\n"):
        lines = [line.rstrip() for line in paragraph.strip("\n").splitlines()]
        if lines and lines[0].strip() == "\b":
            out.append("\n".join(lines[1:]))
        else:
            out.append(" ".join(line.strip() for line in lines))
    return escape("\n\n".join(out))


def _quiet_flags(params: list) -> list:
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
            param.metavar = ""  # a flag takes no value: no "<bool>" after it
    return params


class Command(TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = help_text(self.help) if self.help else self.help

    def get_params(self, ctx: Any) -> list:
        return _quiet_flags(super().get_params(ctx))


class Group(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = help_text(self.help) if self.help else self.help

    def get_params(self, ctx: Any) -> list:
        return _quiet_flags(super().get_params(ctx))


class CliApp(typer.Typer):
    """A typer app whose commands are :class:`Command` (so commands registered from other packages get the
    style too)."""

    def command(self, *args: Any, cls: type | None = None, **kwargs: Any):  # type: ignore[override]
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        return super().command(*args, cls=cls or Command, **kwargs)

    def callback(self, *args: Any, cls: type | None = None, **kwargs: Any):  # type: ignore[override]
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        return super().callback(*args, cls=cls or Group, **kwargs)


def cli_app(**kwargs: Any) -> CliApp:
    """A typer app in the project's style (see the module docstring); the help of its commands and groups (their
    ``help=`` or docstring) goes through :func:`help_text`."""
    kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
    kwargs.setdefault("add_completion", False)
    kwargs.setdefault("pretty_exceptions_enable", False)
    kwargs.setdefault("rich_markup_mode", "rich")
    kwargs.setdefault("cls", Group)
    return CliApp(**kwargs)
