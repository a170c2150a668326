"""The conversion job: check inputs, plan, write the GGUF (merged model or LoRA adapter), summarize."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gguf
import torch
from gguf import GGMLQuantizationType as QT

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import check_writable, remove_stale_temps, temp_path

from .adapter import Adapter
from .architectures import (
    FILE_TYPE,
    ArchSpec,
    OutTensor,
    Planner,
    _permute_rows,
    expert_parts,
    layer_index,
    resolve_type,
    spec_for,
)
from .checkpoint import Checkpoint
from .tokenizer import TokenizerInfo
from .writer import GGUFStream, check_free_space, temp_path_for, terminate_as_interrupt

ADAPTER_TYPES = ("f32", "f16", "bf16")
logging.getLogger("gguf").setLevel(logging.ERROR)  # its tokenizer-config notes are not the user's business


@dataclass
class ConvertOptions:
    base: Path
    out: Path
    adapter: Path | None = None
    out_type: str = "auto"
    adapter_only: bool = False
    name: str | None = None
    threads: int | None = None


@dataclass
class Summary:
    output: Path
    out_type: str
    architecture: str
    tensors: int
    types: dict[str, int]
    size_bytes: int
    seconds: float
    peak_rss_bytes: int
    merged_targets: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output), "type": self.out_type, "architecture": self.architecture,
            "tensors": self.tensors, "tensor_types": self.types, "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 2), "peak_rss_bytes": self.peak_rss_bytes,
            "merged_lora_targets": self.merged_targets,
        }


Progress = Callable[[str, int, int], None]  # (tensor name, done, total)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process and of finished children (llama.cpp's quantizer)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) * 1024


def _check_output(out: Path) -> None:
    if out.exists() and out.is_dir():
        raise HaruhiError(f"--out must be a file path such as {out / 'model.gguf'}, not a folder")
    if out.suffix.lower() != ".gguf":
        raise HaruhiError(f"--out should end in .gguf (got {out.name})")
    check_writable(out.parent if str(out.parent) else Path("."))  # before minutes of work: /proc, read-only


def _general_metadata(gw: gguf.GGUFWriter, opts: ConvertOptions, ckpt: Checkpoint, adapter: Adapter | None) -> None:
    if opts.name:
        name = opts.name
    elif opts.adapter:  # the trainer writes <run>/adapter: the run's name says more
        folder = Path(opts.adapter).resolve()
        name = folder.parent.name if folder.name == "adapter" else folder.name
    else:
        name = ckpt.directory.resolve().name
    gw.add_name(name)
    if adapter is not None:
        gw.add_finetune("lora-merged" if not opts.adapter_only else "lora")
        gw.add_base_model_count(1)
        gw.add_base_model_name(0, ckpt.directory.name)


#: What reading a config.json, tokenizer file or adapter_config.json with a value of the wrong type or shape
#: raises (a number as text, a list where an object belongs, a key missing, a pattern that is no regex).
_MALFORMED = (KeyError, IndexError, ValueError, TypeError, AttributeError, re.error)


def convert(opts: ConvertOptions, progress: Progress | None = None,
            log: Callable[[str], None] | None = None) -> Summary:
    """Run one conversion. Raises HaruhiError for anything the user can fix: the model's and the adapter's
    files are the user's input, so one that holds something unexpected is a one-line error naming them."""
    try:
        return _convert(opts, progress, log)
    except _MALFORMED as exc:
        folders = " and ".join(str(p) for p in (opts.base, opts.adapter) if p)
        raise HaruhiError(f"the files in {folders} hold something haruhi-convert cannot read "
                          f"({type(exc).__name__}: {str(exc)[:200]}); check config.json, the tokenizer files and "
                          "adapter_config.json, or download them again") from exc


def _convert(opts: ConvertOptions, progress: Progress | None, log: Callable[[str], None] | None) -> Summary:
    started = time.monotonic()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    out = Path(opts.out)
    _check_output(out)
    for stale in remove_stale_temps(out):
        if log:
            log(f"removed {stale.name}, left by an interrupted run")
    ckpt = Checkpoint(opts.base)
    spec = spec_for(ckpt)
    adapter = Adapter(opts.adapter, ckpt, spec.expert_param_order) if opts.adapter else None
    if opts.adapter_only:
        if adapter is None:
            raise HaruhiError("--adapter-only needs --adapter")
        return _export_adapter(opts, ckpt, spec, adapter, out, started, progress)

    out_type = resolve_type(spec, opts.out_type)
    planner = Planner(ckpt, spec, "bf16" if out_type == "q4_k_m" else out_type, adapter)
    tensors = planner.plan()
    if unused := planner.unused_targets():
        raise HaruhiError(f"adapter weights for {unused[0]} match no tensor that was converted; "
                          "the adapter belongs to another model")
    n_vocab = _vocab_rows(ckpt, tensors)
    tok = TokenizerInfo(ckpt.directory, spec.vocab, n_vocab, spec.default_pre, spec.force_add_bos)

    stream = GGUFStream(out, spec.gguf_name)
    gw = stream.gw
    gw.add_type(gguf.GGUFType.MODEL)
    _general_metadata(gw, opts, ckpt, adapter)
    file_type = FILE_TYPE.get(out_type, gguf.LlamaFileType.MOSTLY_BF16)
    planner.add_metadata(gw, file_type)
    tok.add_to(gw)
    stream.declare(tensors)

    needed = stream.data_bytes() + 64 * 2**20
    if out_type == "q4_k_m":
        needed += needed // 3  # the bf16 intermediate plus the ~4.8-bit result
    check_free_space(out.parent, needed, f"a {out_type} GGUF of this model")

    total = len(tensors)
    done = [0]

    def on_tensor(t: OutTensor, nbytes: int, seconds: float) -> None:
        done[0] += 1
        if progress:
            progress(t.name, done[0], total)

    notes = []
    if out_type == "q4_k_m":
        intermediate = temp_path(out, "bf16.partial")
        try:
            stream.target = intermediate
            stream.write(on_tensor, temp=temp_path(out, "bf16.partial.tmp"))
            if progress:
                progress("quantizing to Q4_K_M with llama.cpp", total, total)
            _llama_quantize(intermediate, out, gguf.LlamaFileType.MOSTLY_Q4_K_M, opts.threads)
        finally:
            with contextlib.suppress(FileNotFoundError):
                intermediate.unlink()
        notes.append("Q4_K_M quantized by llama.cpp from a bf16 intermediate")
    else:
        stream.write(on_tensor)

    types = _tensor_types(out) if out_type == "q4_k_m" else dict(Counter(t.qtype.name for t in tensors))
    return Summary(out, out_type, spec.label, total, types, out.stat().st_size, time.monotonic() - started,
                   peak_rss_bytes(), len(adapter.targets) + len(adapter.replacements) if adapter else 0, notes)


def _vocab_rows(ckpt: Checkpoint, tensors: list[OutTensor]) -> int:
    for t in tensors:
        if t.name == "token_embd.weight":
            return t.shape[0]
    return int(ckpt.hparams["vocab_size"])


def _tensor_types(path: Path) -> dict[str, int]:
    from haruhi_tui.core.gguf_header import GGUFHeader

    return GGUFHeader(path).type_counts()


_QUANTIZE_SCRIPT = """
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3]); params.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""


def _llama_quantize(src: Path, out: Path, ftype: int, threads: int | None) -> None:
    """llama.cpp's own quantizer (K-quants), in a child process so Ctrl-C can stop it at once."""
    tmp = temp_path_for(out)
    threads = threads or len(os.sched_getaffinity(0))
    cmd = [sys.executable, "-c", _QUANTIZE_SCRIPT, str(src), str(tmp), str(int(ftype)), str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with terminate_as_interrupt():
            output, _ = proc.communicate()
        if proc.returncode != 0:
            tail = " | ".join(line for line in output.strip().splitlines()[-3:])
            raise HaruhiError(f"llama.cpp could not quantize the model (exit {proc.returncode}): {tail}")
        os.replace(tmp, out)
    except BaseException:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# --- LoRA adapter export --------------------------------------------------------------------------

def _export_adapter(opts: ConvertOptions, ckpt: Checkpoint, spec: ArchSpec, adapter: Adapter, out: Path,
                    started: float, progress: Progress | None) -> Summary:
    """A GGUF LoRA adapter for llama.cpp (``--lora``): lora_a {in, r} and lora_b {r, out} per weight;
    for gpt-oss experts 3-D lora_a {in, r, E} and lora_b {r, out, E}, which llama.cpp applies per
    selected expert (``build_lora_mm_id``)."""
    out_type = opts.out_type.lower()
    if out_type == "auto":
        out_type = "f16"
    if out_type not in ADAPTER_TYPES:
        raise HaruhiError(f"--adapter-only writes {', '.join(ADAPTER_TYPES)}; --type {out_type} is for merged models")
    qtype = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16}[out_type]
    if adapter.replacements:
        first = next(iter(adapter.replacements))
        raise HaruhiError(f"the adapter carries a full copy of {first} (modules_to_save), which a GGUF LoRA "
                          "cannot hold; convert without --adapter-only to merge it")
    planner = Planner(ckpt, spec, "f32", adapter)
    for param, target in adapter.targets.items():
        if target.kind == "embedding":
            raise HaruhiError(f"LoRA on the token embedding ({param}) cannot be exported as a GGUF adapter; "
                              "convert without --adapter-only to merge it")
        if target.bias_key:
            raise HaruhiError(f"LoRA with trained biases ({param}) cannot be exported as a GGUF adapter; "
                              "convert without --adapter-only to merge it")
    # llama.cpp scales each pair by alpha / rank (rank = lora_b's inner size). When every module's
    # scaling is one alpha over its rank, B is kept as trained; otherwise (alpha_pattern, rsLoRA with
    # mixed ranks) each module's scaling is folded into its B and alpha = 0 (llama.cpp then adds B @ A).
    alphas = {round(t.scaling * t.rank, 9) for t in adapter.targets.values()}
    uniform = len(alphas) == 1
    alpha = alphas.pop() if uniform else 0.0
    tensors: list[OutTensor] = []
    for param, target in sorted(adapter.targets.items()):
        fold = 1.0 if uniform else target.scaling
        if target.kind == "linear":
            tensors.extend(_linear_adapter_tensors(planner, adapter, target, qtype, fold))
        else:
            tensors.extend(_expert_adapter_tensors(adapter, target, qtype, fold))
    stream = GGUFStream(out, spec.gguf_name)
    gw = stream.gw
    gw.add_type(gguf.GGUFType.ADAPTER)
    gw.add_string(gguf.Keys.Adapter.TYPE, "lora")
    gw.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    _general_metadata(gw, opts, ckpt, adapter)
    gw.add_quantization_version(gguf.GGML_QUANT_VERSION)
    stream.declare(tensors)
    check_free_space(out.parent, stream.data_bytes() + 2**20, "the adapter GGUF")
    total = len(tensors)
    count = [0]

    def on_tensor(t: OutTensor, nbytes: int, seconds: float) -> None:
        count[0] += 1
        if progress:
            progress(t.name, count[0], total)

    stream.write(on_tensor)
    types = dict(Counter(t.qtype.name for t in tensors))
    return Summary(out, f"lora-{out_type}", spec.label, total, types, out.stat().st_size,
                   time.monotonic() - started, peak_rss_bytes(), len(adapter.targets))


def _linear_adapter_tensors(planner: Planner, adapter: Adapter, target, qtype: QT, fold: float) -> list[OutTensor]:
    gname = planner.gguf_name(target.param)
    a_shape = adapter.files.info(target.a_key).shape  # (r, in)
    b_shape = adapter.files.info(target.b_key).shape  # (out, r)
    permute = None
    if planner.spec.permute_qk and target.param.endswith("q_proj.weight"):
        permute = planner.n_head
    elif planner.spec.permute_qk and target.param.endswith("k_proj.weight"):
        permute = planner.n_head_kv

    def a_rows():
        yield adapter.files.read_f32(target.a_key)

    def b_rows():
        b = adapter.files.read_f32(target.b_key)
        if permute is not None:
            b = _permute_rows(b, permute)
        yield b * fold

    return [OutTensor(gname + ".lora_a", a_shape, qtype, a_rows, target.param),
            OutTensor(gname + ".lora_b", b_shape, qtype, b_rows, target.param)]


def _expert_adapter_tensors(adapter: Adapter, target, qtype: QT, fold: float) -> list[OutTensor]:
    module, _, param = target.param.rpartition(".")
    bid = layer_index(module)
    e = target.experts
    lhs0, rhs0 = adapter.expert_factors(target, 0)  # (out, r), (r, in)
    out_dim, in_dim, r = lhs0.shape[0], rhs0.shape[1], rhs0.shape[0]
    parts = expert_parts(param)
    if not parts:
        raise HaruhiError(f"cannot export LoRA on {target.param} as a GGUF adapter")
    rows = out_dim // len(parts)
    result = []
    for kind, sel in parts:
        base = gguf.TENSOR_NAMES[kind].format(bid=bid) + ".weight"

        def a_rows():
            for x in range(e):
                yield adapter.expert_factors(target, x)[1]  # (r, in)

        def b_rows(sel=sel):
            for x in range(e):
                yield adapter.expert_factors(target, x)[0][sel] * fold  # (out, r)

        result.append(OutTensor(base + ".lora_a", (e, r, in_dim), qtype, a_rows, target.param))
        result.append(OutTensor(base + ".lora_b", (e, rows, r), qtype, b_rows, target.param))
    return result
