"""A group scene in the app, driven by Textual's pilot on the real app with real llama.cpp (Gemma 3 270M): the
members picked, replies in turn, by mention and by pick, each prompted as its speaker, regenerated in place."""

from __future__ import annotations

import pytest
from app_support import SIZE, make_app, send, wait_for
from group_characters import KOIZUMI_PROMPT, NAGATO_GROUP_GREETING, NAGATO_PROMPT, make_group_characters

from haruhi_tui.app.screens.context import ContextScreen
from haruhi_tui.app.screens.group import GroupPicker
from haruhi_tui.app.screens.pick import CharacterPicker
from haruhi_tui.app.widgets.speaker_bar import SpeakerBar
from haruhi_tui.core.paths import data_dir
from haruhi_tui.core.sharegpt import load_sharegpt
from haruhi_tui.services.group_chat import GroupSession


def _last_reply(screen):
    """The last reply on screen, its stored row and the prompt it was generated with."""
    view = screen.views()[-1]
    message = screen.session.messages[-1]
    assert view.role == "assistant" and view.message_id == message.id and view.status == "complete"
    return view, message, screen.session.last_context


def _prompted_as(ctx, name: str, role_prompt: str) -> None:
    """The prompt's system block is the speaker's and its last line (the play script) hands them the word."""
    assert ctx.prompt.character == name and ctx.prompt.system.startswith(role_prompt)
    assert ctx.text.rstrip("\n").splitlines()[-1] == f"{name}:「"


@pytest.mark.slow
async def test_a_group_scene_takes_turns_and_prompts_each_reply_as_its_speaker(engine, characters_dir, tmp_path):
    folder = make_group_characters(tmp_path, characters_dir)
    haruhi_prompt = (characters_dir / "haruhi" / "system_prompt.txt").read_text(encoding="utf-8").strip()[:30]
    nagato_prompt = NAGATO_PROMPT.replace("{{user}}", "阿虚")
    app = make_app(folder, tmp_path / "s.db", engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CharacterPicker), what="the character picker")
        await pilot.press("escape")
        screen = app.chat_screen
        screen.action_new_group_chat()  # the palette's "New group chat"
        await wait_for(pilot, lambda: isinstance(app.screen, GroupPicker), what="the group picker")
        await pilot.pause()
        for name in ("haruhi", "nagato", "koizumi"):  # picked in this order: the order they take turns
            await pilot.press(*name, "enter")
        assert app.screen.chosen == ["haruhi", "nagato", "koizumi"]
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(screen.session, GroupSession) and app.screen is screen,
                       what="the group chat")
        session = screen.session
        assert [m.name for m in session.members] == ["春日", "长门", "古泉"]
        greeting = screen.views()[0]
        assert (greeting.speaker, greeting.content) == ("长门", NAGATO_GROUP_GREETING)  # the group greeting
        bar = screen.query_one(SpeakerBar)
        assert bar.display and "Next: 古泉 (auto)" in str(bar.render())
        for name in ("春日", "长门", "古泉"):
            assert name in str(screen.query_one("#chat-title").render())

        await send(pilot, app, "大家好，今天SOS团做什么？")  # nobody named: in turn, after 长门
        view, koizumi_line, ctx = _last_reply(screen)
        assert (view.speaker, koizumi_line.character) == ("古泉", "koizumi") and view.content.strip()
        _prompted_as(ctx, "古泉", KOIZUMI_PROMPT)
        assert f"长门:「{NAGATO_GROUP_GREETING}」\n阿虚:「大家好，今天SOS团做什么？」" in ctx.text
        assert view.color != greeting.color  # each speaker in their own colour

        await send(pilot, app, "")  # Enter on an empty line: the next in turn goes on, round to 春日
        view, haruhi_line, ctx = _last_reply(screen)
        assert (view.speaker, haruhi_line.character, haruhi_line.parent_id) == ("春日", "haruhi", koizumi_line.id)
        _prompted_as(ctx, "春日", haruhi_prompt)
        assert f"古泉:「{koizumi_line.content}」" in ctx.text  # another character's line, as a script line

        await send(pilot, app, "长门，你在读什么书？")  # named: 长门 answers
        view, nagato_line, ctx = _last_reply(screen)
        assert (view.speaker, nagato_line.character) == ("长门", "nagato")
        _prompted_as(ctx, "长门", nagato_prompt)

        await pilot.press("ctrl+g")  # pick: 春日 answers from now on, whoever is named
        assert session.chosen.name == "春日" and "Next: 春日 (picked)" in str(bar.render())
        await send(pilot, app, "长门，再说一句？")
        view, picked_line, ctx = _last_reply(screen)
        assert view.speaker == "春日" and picked_line.character == "haruhi"
        _prompted_as(ctx, "春日", haruhi_prompt)
        for _ in range(3):
            await pilot.press("ctrl+g")  # 长门, 古泉, then automatic again
        assert session.chosen is None

        before = screen.turns_done
        await pilot.press("ctrl+r")  # a new version of the last reply, by the same character
        await wait_for(pilot, lambda: screen.turns_done > before, what="the regenerated reply")
        view, again, ctx = _last_reply(screen)
        assert view.speaker == "春日" and again.parent_id == picked_line.parent_id and again.id != picked_line.id
        assert [m.character for m in app.store.siblings(again.id)] == ["haruhi", "haruhi"]
        assert [v.speaker for v in screen.views()] == ["长门", "阿虚", "古泉", "春日", "阿虚", "长门", "阿虚", "春日"]

        await pilot.press("f2")  # the context of the last reply: 春日's prompt
        await wait_for(pilot, lambda: isinstance(app.screen, ContextScreen), what="the context view")
        assert app.screen.context.prompt.character == "春日"
        await pilot.press("escape")

        exported = data_dir() / "exports" / "group.json"
        assert app.write_chat_export(exported) == exported
        samples = load_sharegpt(exported)
        assert [s.character for s in samples] == ["古泉", "春日", "长门", "春日"]
        assert samples[2].system.startswith(nagato_prompt) and samples[2].target == nagato_line.content.strip()
