"""The llama.cpp engine on real models: friendly errors, styles, streaming, stop, KV-cache reuse, harmony."""

from __future__ import annotations

import codecs
import dataclasses
import shutil
import threading

import pytest

from haruhi_tui.core import harmony
from haruhi_tui.core.characters import load_character
from haruhi_tui.core.engine import Engine, Sampling, open_gguf
from haruhi_tui.core.errors import ModelError
from haruhi_tui.core.gguf_info import check_fits, detect_model_style, read_gguf_info
from haruhi_tui.core.reply_stream import ReplyStream
from haruhi_tui.services.bundled_model import default_gguf
from haruhi_tui.services.chat import ChatSession
from haruhi_tui.store import MEMORY, Store

GREEDY = Sampling(temperature=0.0, max_tokens=24, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def gemma_path():
    return default_gguf()


@pytest.fixture(scope="module")
def engine(gemma_path) -> Engine:
    return open_gguf(gemma_path, n_ctx=2048)


@pytest.fixture(scope="module")
def haruhi(characters_dir):
    return load_character(characters_dir / "haruhi")


# -- opening models ------------------------------------------------------------------------------

def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        open_gguf(tmp_path / "nope.gguf")


def test_a_file_that_is_not_a_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("definitely not a model\n" * 50)
    with pytest.raises(ModelError, match="cannot be used: not a usable GGUF"):
        open_gguf(fake)


def test_a_cut_off_download_is_refused_before_llama_cpp_sees_it(tmp_path, gemma_path):
    cut = tmp_path / "cut.gguf"
    with gemma_path.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(20 * 2**20))
    with pytest.raises(ModelError, match="incomplete"):
        open_gguf(cut)


def test_damaged_tensor_data_is_a_one_line_error(tmp_path, gemma_path):
    """A header whose tensor type is garbage passes the picker's size checks; llama.cpp refuses it and the
    engine says so in one line."""
    import struct

    bad = tmp_path / "bad.gguf"
    shutil.copy(gemma_path, bad)
    name = b"token_embd.weight"
    with bad.open("r+b") as fh:
        head = fh.read(16 * 2**20)
        at = head.find(name)
        assert at > 0
        at += len(name)
        n_dims = struct.unpack_from("<I", head, at)[0]
        fh.seek(at + 4 + 8 * n_dims)
        fh.write(struct.pack("<I", 0xFFFF))  # the tensor's ggml type
    with pytest.raises(ModelError, match="could not load bad.gguf") as err:
        open_gguf(bad, n_ctx=512)
    assert "\n" not in str(err.value)


def test_a_model_too_big_for_this_machine_is_refused_with_what_to_do(gemma_path):
    info = read_gguf_info(gemma_path)
    huge = dataclasses.replace(info, size_bytes=2**50)
    with pytest.raises(ModelError, match="needs about .* smaller quantization"):
        check_fits(huge, 4096)
    check_fits(info, 4096)


def test_the_bundled_base_model_speaks_the_play_script(gemma_path, engine):
    assert detect_model_style(gemma_path) == "script"
    assert engine.style == "script"
    assert engine.count_tokens("凉宫春日") == len(engine.llama.tokenize("凉宫春日".encode(), add_bos=False))


# -- streaming -------------------------------------------------------------------------------------

def test_a_reply_streams_in_character_and_ends_at_the_closing_quote(engine, haruhi):
    session = ChatSession.start(Store(MEMORY), haruhi)
    pieces: list[str] = []
    reply = session.send(engine, "你好，今天SOS团有什么活动？", sampling=GREEDY,
                         on_delta=lambda m, d: pieces.append(d.text))
    assert reply.content and reply.status == "complete"
    assert len(pieces) > 1  # it came token by token
    assert "」" not in reply.content and "\n" not in reply.content
    assert engine.last_stats.stop_reason in ("stop", "length", "end")
    assert session.last_context.text.endswith(f"{haruhi.name}:「")


def test_the_second_turn_reuses_the_persona_prefix_from_the_kv_cache(engine, haruhi):
    session = ChatSession.start(Store(MEMORY), haruhi)
    session.send(engine, "你好，今天SOS团有什么活动？", sampling=GREEDY)
    first = engine.last_stats
    session.send(engine, "Tell me more.", sampling=GREEDY)
    second = engine.last_stats
    assert first.prompt_tokens > 300
    assert second.reused_tokens >= 0.8 * second.prompt_tokens
    assert second.evaluated_tokens < 0.2 * second.prompt_tokens


def test_stop_ends_generation_between_two_tokens(engine, haruhi):
    session = ChatSession.start(Store(MEMORY), haruhi)
    cancel = threading.Event()
    cancel.set()
    reply = session.send(engine, "讲一个很长的故事", cancel=cancel,
                         sampling=dataclasses.replace(GREEDY, max_tokens=200))
    assert engine.last_stats.stop_reason == "cancelled"
    assert engine.last_stats.generated_tokens == 1
    assert reply.status == "stopped"


def test_a_prompt_longer_than_the_context_is_an_error_not_a_crash(engine):
    with pytest.raises(ModelError, match="context holds"):
        list(engine.stream("春日 " * 5000, GREEDY))


def test_one_generation_at_a_time(engine):
    engine.style = "harmony"  # plain text never ends a harmony reply early
    try:
        first = engine.stream("Once upon a time", GREEDY)
        next(first)
        with pytest.raises(ModelError, match="already generating"):
            next(engine.stream("Again", GREEDY))
        first.close()
        assert list(engine.stream("Once upon a time", dataclasses.replace(GREEDY, max_tokens=3)))
    finally:
        engine.style = "script"


# -- harmony through the streaming path --------------------------------------------------------------

def test_harmony_output_from_llama_cpp_is_split_into_thinking_and_speech(engine):
    """Gemma copies a pattern it has seen four times, so it writes real harmony text token by token;
    the engine's streaming path must keep the analysis out of the character's words."""
    example = (
        "<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>analysis<|message|>The user greets. Reply."
        "<|end|><|start|>assistant<|channel|>final<|message|>Hello!<|return|>\n"
    )
    engine.style = "harmony"
    try:
        deltas = list(engine.stream(example * 4 + "<|start|>user<|message|>hi<|end|><|start|>assistant",
                                    dataclasses.replace(GREEDY, max_tokens=60)))
    finally:
        engine.style = "script"
    final = "".join(d.text for d in deltas if d.channel == "final")
    analysis = "".join(d.text for d in deltas if d.channel == "analysis")
    assert final == "Hello!"
    assert "greets" in analysis and "greets" not in final
    assert engine.last_stats.stop_reason == "stop"  # ended at <|return|>, not at max_tokens


def _pieces(engine: Engine, text: str) -> list[str]:
    """``text`` as the token loop sees it: one model token at a time, UTF-8 completed across tokens."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    tokens = engine.llama.tokenize(text.encode(), add_bos=False, special=True)
    return [decoder.decode(engine.piece(t, True)) for t in tokens] + [decoder.decode(b"", final=True)]


def test_reply_stream_keeps_cjk_intact_and_the_analysis_apart(engine):
    completion = (
        "<|channel|>analysis<|message|>用户在问SOS团的活动，用春日的口吻回答。<|end|>"
        "<|start|>assistant<|channel|>final<|message|>当然是去找外星人、未来人和超能力者！<|return|>"
        "<|start|>assistant<|channel|>final<|message|>never shown"
    )
    pieces = _pieces(engine, completion)
    assert any(p == "" for p in pieces)  # some CJK characters really are split across tokens
    stream = ReplyStream("harmony")
    deltas = [d for p in pieces for d in stream.feed(p)] + stream.close()
    assert stream.finished
    assert "".join(d.text for d in deltas if d.channel == "final") == "当然是去找外星人、未来人和超能力者！"
    assert "".join(d.text for d in deltas if d.channel == "analysis") == "用户在问SOS团的活动，用春日的口吻回答。"
    assert stream.final == harmony.parse_reply(completion).final


def test_reply_stream_ends_a_harmony_reply_when_the_final_message_closes():
    stream = ReplyStream("harmony")
    deltas = stream.feed("<|channel|>final<|message|>好。<|end|><|start|>assistant<|channel|>final<|message|>again")
    assert stream.finished and "".join(d.text for d in deltas) == "好。"


def test_reply_stream_holds_back_a_stop_string_split_across_tokens():
    stream = ReplyStream("chat", ["<end_of_turn>"])
    out = stream.feed("Hello <end_") + stream.feed("of_turn> more")
    assert stream.finished and "".join(d.text for d in out) == "Hello "
    script = ReplyStream("script", ["」", "\n"])
    text = "".join(d.text for p in ("我是", "春日", "」", "阿虚") for d in script.feed(p))
    assert text == "我是春日" and script.finished


# -- a real gpt-oss GGUF (tiny, random weights) -----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_gpt_oss_gguf(tiny_gpt_oss, tmp_path_factory):
    from convert.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("tiny_gguf") / "tiny-gpt-oss.gguf"
    convert(ConvertOptions(base=tiny_gpt_oss, out=out, out_type="f32"))
    return out


@pytest.mark.slow
def test_gpt_oss_is_opened_in_harmony_style_with_special_tokens_as_tokens(tiny_gpt_oss_gguf, haruhi):
    engine = open_gguf(tiny_gpt_oss_gguf, n_ctx=1024)
    assert engine.style == "harmony" == detect_model_style(tiny_gpt_oss_gguf)
    session = ChatSession.start(Store(MEMORY), haruhi)
    session.set_reasoning_effort("medium")
    reply = session.send(engine, "<|start|>你好", sampling=dataclasses.replace(GREEDY, max_tokens=8))
    ctx = session.last_context
    assert "Reasoning: medium" in ctx.text and ctx.text.endswith("<|start|>assistant")
    tokens = engine.tokenize_prompt(ctx.text)
    for marker in (harmony.START, harmony.MESSAGE, harmony.END):
        assert harmony.SPECIAL_TOKEN_IDS[marker] in tokens
        assert engine.token_text(harmony.SPECIAL_TOKEN_IDS[marker]) == marker
    assert tokens.count(harmony.SPECIAL_TOKEN_IDS[harmony.START]) == ctx.text.count(harmony.START)
    assert "<|start|>你好" not in ctx.text  # what the user types cannot open a harmony message
    assert "<|" not in reply.content  # whatever random tokens came out, no marker reaches the speech
    engine.close()


def test_a_model_with_its_own_template_is_prompted_through_it(tiny_gpt_oss_gguf, haruhi):
    """The chat style: llama.cpp's Jinja renderer applies the GGUF's template (here gpt-oss's own file)."""
    engine = open_gguf(tiny_gpt_oss_gguf, n_ctx=1024, style="chat")
    assert engine.info.chat_template
    session = ChatSession.start(Store(MEMORY), haruhi)
    reply = session.send(engine, "你好", sampling=dataclasses.replace(GREEDY, max_tokens=6))
    text = session.last_context.text
    assert "你好" in text and haruhi.role_prompt.splitlines()[0][:20] in text
    assert harmony.SPECIAL_TOKEN_IDS[harmony.START] in engine.tokenize_prompt(text)
    assert reply.status == "complete" and "<|" not in reply.content
    engine.close()


def test_thinking_is_never_fed_back_as_the_characters_words(engine, haruhi):
    store = Store(MEMORY)
    session = ChatSession.start(store, haruhi)
    user = store.add_message(session.chat.id, None, "user", "你在想什么？")
    store.add_message(session.chat.id, user.id, "assistant", "没什么！", analysis="SECRET-ANALYSIS 用户在试探")
    session.messages = store.branch(session.chat.id)
    session.add_user_message("真的吗？")
    ctx = session.build_context(engine)
    assert "没什么！" in ctx.text and "SECRET-ANALYSIS" not in ctx.text
    engine.style = "harmony"
    try:
        ctx = session.build_context(engine)
    finally:
        engine.style = "script"
    assert "<|channel|>final<|message|>没什么！<|end|>" in ctx.text and "SECRET-ANALYSIS" not in ctx.text


def test_a_long_chat_keeps_a_cacheable_prefix_when_old_turns_leave_the_window(engine, haruhi):
    """Old turns leave the history in jumps, not one per message, so most turns only append to the prompt."""
    store = Store(MEMORY)
    session = ChatSession.start(store, haruhi)
    parent = None
    for i in range(40):
        q = store.add_message(session.chat.id, parent, "user", f"第{i}个问题：今天SOS团要去哪里？")
        parent = store.add_message(session.chat.id, q.id, "assistant", f"第{i}个回答：当然是去找外星人！").id
    branch = store.branch(session.chat.id)
    budget = session.builder(engine).budget.history
    stable = steps = 0
    previous = None
    for n in range(1, 40):
        upto = branch[: 2 * n + 1]  # ends on the user's n-th question
        ctx = session.build_context(engine, upto)
        session.chat.scene_ids = ctx.prompt.scene_ids  # as a reply does: the scenes stay put
        assert sum(engine.count_tokens(t.as_line()) for t in ctx.prompt.turns[:-1]) <= budget
        if previous is not None:
            steps += 1
            stable += ctx.text.startswith(previous)
        tail = ctx.prompt.turns[-1].as_line() + "\n" + f"{haruhi.name}:「"
        assert ctx.text.endswith(tail)
        previous = ctx.text[: -len(tail)]
    assert ctx.prompt.dropped_turns > 0
    history_block = next(b for b in ctx.prompt.blocks if b.kind == "history")
    assert history_block.cut == f"{ctx.prompt.dropped_turns} older turn(s) left out"
    assert stable >= 0.8 * steps


@pytest.mark.parametrize("entry", ["haruhi_tui.app.main", "haruhi_tui.core.engine"])
def test_llama_cpp_is_loaded_before_numpy(entry):
    """A CUDA llama-cpp-python crashed loading a model when numpy's libraries were loaded first (seen on the
    H100 machine); the chat app's entry points load llama.cpp's shared library before anything pulls numpy in."""
    import subprocess
    import sys

    code = (f"import sys, {entry}; m = list(sys.modules); "
            "print(m.index('llama_cpp.llama_cpp') < m.index('numpy') if 'numpy' in m else True)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
