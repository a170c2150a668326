"""The context view: exactly what the model was sent, block by block, with token counts and what was cut,
then the rendered prompt text itself."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Collapsible, DataTable, Footer, Label, Static, TextArea

from haruhi_tui.core.persona import Block
from haruhi_tui.services.chat import ContextSnapshot


def summary_line(ctx: ContextSnapshot) -> str:
    parts = [f"{ctx.model} · {ctx.style} · {ctx.prompt_tokens} prompt tokens"]
    if ctx.stats is not None and ctx.stats.prompt_tokens:
        parts.append(f"{ctx.stats.reused_tokens} reused from the KV cache, {ctx.stats.evaluated_tokens} evaluated")
        if ctx.stats.generated_tokens:
            parts.append(f"{ctx.stats.generated_tokens} generated at {ctx.stats.tokens_per_second:.1f} tok/s")
    if ctx.prompt.dropped_turns:
        parts.append(f"{ctx.prompt.dropped_turns} older turn(s) left out")
    return " · ".join(parts)


def block_cell(block: Block) -> str | Text:
    """A block's title, with its detail lines under it (world info: each entry that fired and the key that did)."""
    if not block.detail:
        return block.title
    return Text(block.title).append("".join(f"\n  {line}" for line in block.detail.splitlines()), style="dim")


class ContextScreen(Screen[None]):
    BINDINGS = [Binding("escape,f2,q", "app.pop_screen", "Back to the chat")]

    def __init__(self, context: ContextSnapshot | None, note: str = "") -> None:
        super().__init__()
        self.context = context
        self.note = note

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="context"):
            yield Label("Context sent to the model" if not self.note else self.note, classes="dialog-title")
            if self.context is None:
                yield Static("Nothing sent yet: send a message first.", classes="note")
            else:
                ctx = self.context
                yield Static(summary_line(ctx), id="context-summary")
                table = DataTable(id="blocks", cursor_type="row", zebra_stripes=True)
                table.add_columns("block", "tokens", "cut")
                for block in ctx.prompt.blocks:
                    table.add_row(block_cell(block), str(block.tokens), block.cut or "—", key=block.kind,
                                  height=None if block.detail else 1)
                yield table
                for block in ctx.prompt.blocks:
                    with Collapsible(title=f"{block.title} · {block.tokens} tokens", collapsed=block.kind != "message"):
                        yield Static(Text(block.text), classes="block-text")
                yield Label(f"Rendered prompt ({ctx.style})", classes="section")
                yield TextArea(ctx.text, read_only=True, soft_wrap=True, show_line_numbers=False, id="rendered")
        yield Footer()
