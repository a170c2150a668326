"""The download dialog offers the model catalogue: picking an entry fills in its repo and file, Enter fetches
it from a hub on 127.0.0.1 into the models folder (real app, pilot, no generation)."""

from __future__ import annotations

import pytest
from app_support import SIZE, make_app, open_download_dialog, wait_for
from textual.widgets import Input, Select

from haruhi_tui.services.model_catalogue import CATALOGUE, find_entry


@pytest.mark.slow
async def test_picking_a_catalogue_entry_downloads_it(characters_dir, tmp_path, hub):
    entry = find_entry("llama-3.2-1b")
    hub.repos[entry.repo] = {entry.file: b"\x01" * 50_000}
    app = make_app(characters_dir, tmp_path / "s.db", engine=None, model=tmp_path / "none.gguf")
    async with app.run_test(size=SIZE) as pilot:
        dialog = await open_download_dialog(pilot, app)
        await pilot.pause()
        select = dialog.query_one("#catalogue", Select)
        assert [value for _, value in select._options if value is not Select.NULL] == [e.id for e in CATALOGUE]
        select.value = entry.id
        await pilot.pause()
        assert dialog.query_one("#repo", Input).value == entry.repo
        assert dialog.query_one("#file", Input).value == entry.file
        assert entry.note in str(dialog.query_one("#download-status").render())
        dialog.query_one("#repo", Input).focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is not dialog, what="the download")
        assert entry.downloaded() and entry.local_path().read_bytes() == b"\x01" * 50_000
