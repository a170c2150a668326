"""The one GGUF header reader, checked against gguf-py's own reader on files gguf-py's writer made."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import gguf
import numpy as np
import pytest

from haruhi_tui.core.gguf_header import GGUFError, GGUFHeader, read_parts, split_parts

TOKENS = ["<unk>", "<s>", "</s>"] + [f"tok{i}" for i in range(300)]


def write_gguf(path: Path, tensors: dict[str, np.ndarray] | None = None) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Tiny")
    writer.add_context_length(2048)
    writer.add_float32("test.scale", 0.5)
    writer.add_bool("test.flag", True)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores([float(-i) for i in range(len(TOKENS))])
    writer.add_array("test.ints", [3, 1, 4, 1, 5])
    ramp = np.linspace(-1, 1, 64 * 32, dtype=np.float32).reshape(64, 32)
    q8 = gguf.quants.quantize(ramp, gguf.GGMLQuantizationType.Q8_0)
    for name, array in (tensors or {"token_embd.weight": np.arange(303 * 16, dtype=np.float32).reshape(303, 16),
                                     "blk.0.attn_q.weight": np.ones((16, 16), np.float16)}).items():
        writer.add_tensor(name, array)
    writer.add_tensor("blk.0.ffn_up.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_metadata_and_tensors_agree_with_gguf_py(tiny):
    ours = GGUFHeader(tiny, keep_arrays=["tokenizer.ggml.tokens", "tokenizer.ggml.scores", "test.ints"])
    theirs = gguf.GGUFReader(tiny)
    assert ours.metadata["general.name"] == "Tiny" and ours.metadata["llama.context_length"] == 2048
    assert ours.metadata["test.scale"] == 0.5 and ours.metadata["test.flag"] is True
    assert ours.metadata["tokenizer.ggml.tokens"] == TOKENS
    assert ours.metadata["tokenizer.ggml.scores"] == [float(-i) for i in range(len(TOKENS))]
    assert ours.metadata["test.ints"] == [3, 1, 4, 1, 5]
    assert ours.data_start == theirs.data_offset
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        mine = ours.tensors[t.name]
        assert (mine.type, mine.offset, mine.nbytes) == (t.tensor_type, t.data_offset, t.n_bytes), t.name
        assert mine.shape == tuple(int(d) for d in reversed(t.shape)), t.name  # numpy order
        assert np.array_equal(ours.raw(t.name), np.asarray(t.data).view(np.uint8).reshape(-1)), t.name
    assert np.array_equal(ours.values("token_embd.weight"), np.arange(303 * 16, dtype=np.float32).reshape(303, 16))
    assert ours.type_counts() == {"F32": 1, "F16": 1, "Q8_0": 1}
    assert ours.required_size() == ours.file_size == tiny.stat().st_size


def test_arrays_not_asked_for_are_skipped(tiny):
    header = GGUFHeader(tiny)
    assert "tokenizer.ggml.tokens" not in header.metadata and "test.ints" not in header.metadata
    assert header.metadata["tokenizer.ggml.model"] == "llama"
    assert header.parameters() == 303 * 16 + 16 * 16 + 64 * 32


def test_a_tensor_type_newer_than_gguf_py_is_read_but_not_sized(tiny, tmp_path):
    bad = tmp_path / "new-type.gguf"
    data = bytearray(tiny.read_bytes())
    at = data.find(b"blk.0.attn_q.weight") + len("blk.0.attn_q.weight")
    n_dims = int.from_bytes(data[at:at + 4], "little")
    data[at + 4 + 8 * n_dims:at + 8 + 8 * n_dims] = (0xFFFF).to_bytes(4, "little")
    bad.write_bytes(bytes(data))
    header = GGUFHeader(bad)
    assert header.tensors["blk.0.attn_q.weight"].type is None
    assert header.tensors["blk.0.attn_q.weight"].nbytes is None
    assert header.type_counts()["unknown"] == 1
    assert header.required_size() <= bad.stat().st_size


def test_bad_files_are_one_line_errors(tiny, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"definitely not a model")
    with pytest.raises(GGUFError, match="no GGUF magic"):
        GGUFHeader(junk)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.read_bytes()[:600])
    with pytest.raises(GGUFError, match="cut short"):
        GGUFHeader(cut)
    with pytest.raises(GGUFError, match="not a usable GGUF: the header is cut short"):
        read_parts(cut)
    short = tmp_path / "short.gguf"
    short.write_bytes(tiny.read_bytes()[:-100])
    with pytest.raises(GGUFError, match="incomplete: short.gguf has"):
        read_parts(short)


def test_split_models_are_read_part_by_part(tmp_path):
    first = write_gguf(tmp_path / "m-00001-of-00002.gguf")
    assert split_parts(first) == [first, tmp_path / "m-00002-of-00002.gguf"]
    assert split_parts(PurePosixPath("sub/m-00002-of-00003.gguf"))[0] == PurePosixPath("sub/m-00001-of-00003.gguf")
    assert split_parts(tmp_path / "whole.gguf") == [tmp_path / "whole.gguf"]
    with pytest.raises(GGUFError, match="split model is missing 1 of 2 parts"):
        read_parts(first)
    write_gguf(tmp_path / "m-00002-of-00002.gguf", {"x": np.zeros((4, 8), np.float32)})
    assert [h.path.name for h in read_parts(first)] == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]


@pytest.mark.parametrize("alignment", ["32", -8, 0.5])
def test_an_alignment_that_is_not_a_positive_whole_number_is_a_corrupt_header(tmp_path, alignment):
    """general.alignment as text gave ValueError from int(); a negative one a nonsense data offset."""
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    kinds = {str: gguf.GGUFValueType.STRING, int: gguf.GGUFValueType.INT32, float: gguf.GGUFValueType.FLOAT32}
    writer.add_key_value("general.alignment", alignment, kinds[type(alignment)])
    writer.add_tensor("a", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match="general.alignment"):
        read_parts(path)
