"""The harmony renderer and the stream parser, on output as llama.cpp detokenizes gpt-oss."""

import pytest

from haruhi_tui.core import harmony
from haruhi_tui.core.harmony import HarmonyStreamParser, parse_reply, render, render_segments

WITH_ANALYSIS = (
    "<|channel|>analysis<|message|>The user greets me; Haruhi is bossy.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>阿虚！你迟到了，罚你请客！<|return|>"
)
WITHOUT_END = (  # llama.cpp may stop rendering <|end|> before the next header
    "<|channel|>analysis<|message|>思考一下<|start|>assistant<|channel|>final<|message|>SOS团集合！<|return|>"
)
FINAL_ONLY = "<|channel|>final<|message|>Hello, **Harry**.<|return|>"
PLAIN = "我才不管呢！"


def _feed_split(text: str, cuts: tuple[int, ...]):
    parser = HarmonyStreamParser()
    deltas = []
    last = 0
    for cut in cuts:
        deltas += parser.feed(text[last:cut])
        last = cut
    deltas += parser.feed(text[last:])
    deltas += parser.close()
    return parser, harmony.join_channels(deltas)


@pytest.mark.parametrize(
    "text, analysis, final",
    [
        (WITH_ANALYSIS, "The user greets me; Haruhi is bossy.", "阿虚！你迟到了，罚你请客！"),
        (WITHOUT_END, "思考一下", "SOS团集合！"),
        (FINAL_ONLY, "", "Hello, **Harry**."),
        (PLAIN, "", PLAIN),
    ],
)
def test_every_single_chunk_boundary(text, analysis, final):
    for cut in range(len(text) + 1):
        parser, reply = _feed_split(text, (cut,))
        assert (reply.analysis, reply.final) == (analysis, final), f"split at {cut}"
        assert parser.reply.final == final


@pytest.mark.parametrize("text", [WITH_ANALYSIS, WITHOUT_END])
def test_every_pair_of_chunk_boundaries(text):
    expected = parse_reply(text)
    n = len(text)
    for a in range(0, n + 1, 3):
        for b in range(a, n + 1, 5):
            _, reply = _feed_split(text, (a, b))
            assert (reply.analysis, reply.final) == (expected.analysis, expected.final)


def test_character_by_character_stream_never_leaks_markers_into_speech():
    parser = HarmonyStreamParser()
    final_seen = ""
    for ch in WITH_ANALYSIS:
        for delta in parser.feed(ch):
            if delta.channel == "final":
                final_seen += delta.text
                assert "<|" not in final_seen
    parser.close()
    assert final_seen == "阿虚！你迟到了，罚你请客！"
    assert parser.finished


def test_speech_streams_before_the_end_token_arrives():
    parser = HarmonyStreamParser()
    parser.feed("<|channel|>final<|message|>你好")
    assert parser.reply.final == "你好"  # not held back waiting for <|return|>


def test_unfinished_stream_and_commentary_channel():
    reply = parse_reply("<|channel|>commentary to=functions.x <|constrain|>json<|message|>{}<|call|>")
    assert reply.final == "" and reply.analysis == "{}" and reply.finished
    reply = parse_reply("<|channel|>analysis<|message|>cut off mid-thou")
    assert reply.analysis == "cut off mid-thou" and not reply.finished


def test_render_layout_and_trainable_segments():
    segs = render_segments("你是春日。", [("user", "阿虚:「早」"), ("assistant", "迟到了！")],
                           add_generation_prompt=False)
    text = "".join(s.text for s in segs)
    assert text.startswith("<|start|>system<|message|>")
    assert "Reasoning: low" in text
    assert "<|start|>developer<|message|># Instructions\n\n你是春日。<|end|>" in text
    assert text.endswith("<|start|>assistant<|channel|>final<|message|>迟到了！<|return|>")
    assert [s.text for s in segs if s.trainable] == ["迟到了！<|return|>"]


def test_history_turns_end_with_end_and_prompt_opens_assistant():
    text = render("p", [("user", "a"), ("assistant", "b"), ("user", "c")], reasoning_effort="high")
    assert "<|channel|>final<|message|>b<|end|>" in text
    assert text.endswith("<|start|>user<|message|>c<|end|><|start|>assistant")
    assert "Reasoning: high" in text


def test_final_text_strips_analysis_and_tokens():
    assert harmony.final_text(WITH_ANALYSIS) == "阿虚！你迟到了，罚你请客！"
    assert harmony.final_text("  plain reference ") == "plain reference"
    assert harmony.strip_special_tokens("<|start|>a<|message|>b") == "ab"


TOOL_CALL_FIRST = " to=functions.lookup<|channel|>commentary json<|message|>{}<|call|>"  # the official template's form
PLAIN_ASSISTANT = "assistant here, how can I help"


def _whole_and_char_by_char(text: str):
    parser = HarmonyStreamParser()
    streamed = [d for ch in text for d in parser.feed(ch)] + parser.close()
    return parse_reply(text), parser, harmony.join_channels(streamed)


def test_a_completion_that_opens_with_a_tool_call_recipient_says_nothing():
    """openai-harmony parses this as a commentary message to functions.lookup: the character says nothing."""
    whole, parser, streamed = _whole_and_char_by_char(TOOL_CALL_FIRST)
    for reply in (whole, streamed):
        assert (reply.final, reply.analysis) == ("", "{}")
    assert whole.finished and parser.finished
    assert whole.channels == parser.reply.channels == ["commentary"]


def test_a_plain_reply_that_starts_with_the_word_assistant_comes_through_whole():
    whole, parser, streamed = _whole_and_char_by_char(PLAIN_ASSISTANT)
    for reply in (whole, streamed):
        assert (reply.final, reply.analysis) == (PLAIN_ASSISTANT, "")
    for cut in range(len(PLAIN_ASSISTANT) + 1):
        assert _feed_split(PLAIN_ASSISTANT, (cut,))[1].final == PLAIN_ASSISTANT, f"split at {cut}"


@pytest.mark.parametrize("closing", ["<|end|>", "<|start|>assistant<|channel|>final<|message|>again"])
def test_the_reply_ends_when_the_final_message_is_closed(closing):
    """:func:`harmony.ends_reply` decides: the final message's <|end|> or a new <|start|> ends the reply (what a
    model writes after it is not the character's), the analysis message's <|end|> does not."""
    text = ("<|channel|>analysis<|message|>想想<|end|><|start|>assistant<|channel|>final<|message|>好。"
            + closing + "more")
    whole, parser, streamed = _whole_and_char_by_char(text)
    for reply in (whole, streamed):
        assert (reply.analysis, reply.final) == ("想想", "好。")
    assert whole.finished and parser.finished
    assert not parse_reply("<|channel|>analysis<|message|>想想<|end|>").finished
