"""What llama.cpp expects of each architecture we convert: names, layouts, metadata keys.

One table entry per family. The tensor names come from ``gguf.TensorNameMap`` (the same map
llama.cpp's own converter uses); the per-architecture rules below mirror llama.cpp's
``convert_hf_to_gguf.py`` and its model loaders (``src/models/*.cpp``):

* gpt-oss (``GptOssForCausalLM`` -> ``gpt-oss``): experts ``gate_up_proj`` (E, hidden, 2*ff) with gate
  and up interleaved on the last axis become ``ffn_gate_exps``/``ffn_up_exps`` (E, ff, hidden);
  ``down_proj`` (E, ff, hidden) becomes ``ffn_down_exps`` (E, hidden, ff); the OpenAI MXFP4 layout
  (``*_blocks``/``*_scales``, already (E, out, in)) is repacked bit-for-bit into ggml MXFP4;
  ``self_attn.sinks`` -> ``attn_sinks.weight``; the router stays F32.
* Gemma 3 (``gemma3``): RMSNorm weights are stored as ``w`` and applied as ``1 + w``: add 1.
* Llama (``llama``): q/k rows are permuted from the rotate-half RoPE layout to ggml's interleaved
  one; Llama 3 RoPE scaling becomes a ``rope_freqs`` tensor.
* Qwen2 / Qwen3 (``qwen2``/``qwen3``): stored as-is (NEOX RoPE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QT

from haruhi_tui.core.errors import HaruhiError

from . import quant
from .adapter import Adapter, LoraTarget
from .checkpoint import Checkpoint

Chunk = torch.Tensor | np.ndarray  # float rows to encode, or bytes already encoded (np.uint8)
ROW_CHUNK_ELEMENTS = 1 << 24  # 16M values (64 MB as f32) per chunk of a large 2-D tensor

# --- output types ---------------------------------------------------------------------------------
OUT_TYPES = ("auto", "f32", "bf16", "f16", "q8_0", "mxfp4", "q4_k_m")
FILE_TYPE = {
    "f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "mxfp4": gguf.LlamaFileType.MOSTLY_MXFP4_MOE,
}
MAIN_QTYPE = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0}


@dataclass
class OutTensor:
    """One tensor of the GGUF: its name, numpy-order shape, encoding, and a producer of its data."""

    name: str
    shape: tuple[int, ...]
    qtype: QT
    produce: Callable[[], Iterator[Chunk]]
    source: str = ""

    @property
    def nbytes(self) -> int:
        return quant.nbytes_of(self.shape, self.qtype)


@dataclass
class ArchSpec:
    key: str
    hf_classes: tuple[str, ...]
    gguf_arch: gguf.MODEL_ARCH
    label: str
    vocab: str  # "bpe" (GPT-2 byte-level BPE) or "spm" (SentencePiece)
    default_pre: str = "default"
    default_type: str = "q8_0"
    moe: bool = False
    permute_qk: bool = False
    norm_shift: float = 0.0
    expert_param_order: tuple[str, ...] = ()
    force_add_bos: bool | None = None
    extra_metadata: Callable[["Planner", gguf.GGUFWriter], None] | None = None

    @property
    def gguf_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]


def _gpt_oss_metadata(p: "Planner", gw: gguf.GGUFWriter) -> None:
    hp = p.hp
    gw.add_sliding_window(int(hp["sliding_window"]))
    gw.add_expert_feed_forward_length(int(hp["intermediate_size"]))


def _gemma3_metadata(p: "Planner", gw: gguf.GGUFWriter) -> None:
    hp = p.hp
    if hp.get("final_logit_softcapping"):
        gw.add_final_logit_softcapping(float(hp["final_logit_softcapping"]))
    if hp.get("attn_logit_softcapping"):
        raise HaruhiError("this Gemma checkpoint uses attention logit soft-capping (Gemma 2?); "
                          "only Gemma 3 is supported")
    if hp.get("sliding_window") and hp.get("sliding_window_pattern") != 1:
        gw.add_sliding_window(int(hp["sliding_window"]))


def _llama_metadata(p: "Planner", gw: gguf.GGUFWriter) -> None:
    gw.add_vocab_size(int(p.hp["vocab_size"]))
    gw.add_rope_dimension_count(p.head_dim)


ARCHES: dict[str, ArchSpec] = {
    spec.key: spec
    for spec in (
        ArchSpec("gpt-oss", ("GptOssForCausalLM",), gguf.MODEL_ARCH.GPT_OSS, "gpt-oss", "bpe", "gpt-4o", "mxfp4",
                 moe=True, expert_param_order=("gate_up_proj", "down_proj"), extra_metadata=_gpt_oss_metadata),
        ArchSpec("gemma3", ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"), gguf.MODEL_ARCH.GEMMA3, "Gemma 3",
                 "spm", norm_shift=1.0, force_add_bos=True, extra_metadata=_gemma3_metadata),
        ArchSpec("llama", ("LlamaForCausalLM",), gguf.MODEL_ARCH.LLAMA, "Llama", "bpe", "llama-bpe",
                 permute_qk=True, extra_metadata=_llama_metadata),
        ArchSpec("qwen2", ("Qwen2ForCausalLM",), gguf.MODEL_ARCH.QWEN2, "Qwen2", "bpe", "qwen2"),
        ArchSpec("qwen3", ("Qwen3ForCausalLM",), gguf.MODEL_ARCH.QWEN3, "Qwen3", "bpe", "qwen2"),
    )
}
SUPPORTED = ", ".join(c for spec in ARCHES.values() for c in spec.hf_classes)


def spec_for(ckpt: Checkpoint) -> ArchSpec:
    for spec in ARCHES.values():
        if ckpt.architecture in spec.hf_classes:
            return spec
    raise HaruhiError(f"unsupported architecture {ckpt.architecture}; haruhi-convert handles {SUPPORTED}")


def resolve_type(spec: ArchSpec, out_type: str) -> str:
    out_type = out_type.lower()
    if out_type not in OUT_TYPES:
        raise HaruhiError(f"unknown --type {out_type}; choose one of {', '.join(OUT_TYPES)}")
    if out_type == "auto":
        return spec.default_type
    if out_type == "mxfp4" and not spec.moe:
        raise HaruhiError(f"--type mxfp4 quantizes mixture-of-experts weights; {spec.label} has none: "
                          "use q8_0 or q4_k_m")
    return out_type


def _rope_parameters(hp: dict[str, Any]) -> dict[str, Any]:
    rope = dict(hp.get("rope_parameters") or hp.get("rope_scaling") or {})
    if "rope_theta" not in rope and "full_attention" not in rope and hp.get("rope_theta") is not None:
        rope["rope_theta"] = hp["rope_theta"]
    if "rope_type" not in rope and rope.get("type"):
        rope["rope_type"] = rope["type"]
    if "sliding_attention" not in rope and hp.get("rope_local_base_freq") is not None:
        rope["sliding_attention"] = {"rope_theta": hp["rope_local_base_freq"]}
    return rope


def layer_index(name: str) -> int:
    """The block number in a checkpoint tensor name (``model.layers.7.mlp...`` -> 7)."""
    return int(name.split(".layers.")[1].split(".")[0])


def expert_parts(param: str) -> list[tuple[gguf.MODEL_TENSOR, slice]]:
    """The GGUF expert tensors one gpt-oss expert parameter (or its bias) becomes, with the output rows each
    takes: ``gate_up_proj`` interleaves gate (even rows) and up (odd rows); ``down_proj`` stays whole.
    Empty for any other name. Used for base weights, biases and adapter-only LoRA alike."""
    param = param.removesuffix("_bias")
    if param == "gate_up_proj":
        return [(gguf.MODEL_TENSOR.FFN_GATE_EXP, slice(0, None, 2)), (gguf.MODEL_TENSOR.FFN_UP_EXP, slice(1, None, 2))]
    if param == "down_proj":
        return [(gguf.MODEL_TENSOR.FFN_DOWN_EXP, slice(None))]
    return []


class Planner:
    """Turns a base checkpoint (+ adapter) into GGUF metadata and a list of output tensors."""

    def __init__(self, ckpt: Checkpoint, spec: ArchSpec, out_type: str, adapter: Adapter | None) -> None:
        self.ckpt, self.spec, self.out_type, self.adapter = ckpt, spec, out_type, adapter
        self.hp = ckpt.hparams
        self.n_layer = int(self.hp["num_hidden_layers"])
        self.n_head = int(self.hp["num_attention_heads"])
        self.n_head_kv = int(self.hp.get("num_key_value_heads", self.n_head))
        self.head_dim = int(self.hp.get("head_dim") or self.hp["hidden_size"] // self.n_head)
        self.name_map = gguf.get_tensor_name_map(spec.gguf_arch, self.n_layer)
        self.used_targets: set[str] = set()

    # --- metadata ------------------------------------------------------------------------------
    def add_metadata(self, gw: gguf.GGUFWriter, file_type: int) -> None:
        hp = self.hp
        gw.add_block_count(self.n_layer)
        gw.add_context_length(int(hp.get("max_position_embeddings", 8192)))
        gw.add_embedding_length(int(hp["hidden_size"]))
        gw.add_feed_forward_length(int(hp["intermediate_size"]))
        gw.add_head_count(self.n_head)
        gw.add_head_count_kv(self.n_head_kv)
        gw.add_key_length(self.head_dim)
        gw.add_value_length(self.head_dim)
        gw.add_layer_norm_rms_eps(float(hp.get("rms_norm_eps", 1e-6)))
        if self.spec.moe:
            gw.add_expert_count(int(hp["num_local_experts"]))
            gw.add_expert_used_count(int(hp["num_experts_per_tok"]))
        rope = _rope_parameters(hp)
        full = rope.get("full_attention", rope)
        if full.get("rope_theta") is not None:
            gw.add_rope_freq_base(float(full["rope_theta"]))
        if (swa := rope.get("sliding_attention", {}).get("rope_theta")) is not None:
            gw.add_rope_freq_base_swa(float(swa))
        rope_type, factor = full.get("rope_type"), full.get("factor")
        if rope_type == "linear" and factor:
            gw.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            gw.add_rope_scaling_factor(float(factor))
        elif rope_type == "yarn" and factor:
            gw.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            gw.add_rope_scaling_factor(float(factor))
            gw.add_rope_scaling_orig_ctx_len(int(full["original_max_position_embeddings"]))
            if full.get("extrapolation_factor") is not None:
                gw.add_rope_scaling_yarn_ext_factor(float(full["extrapolation_factor"]))
            attn = full.get("attention_factor", full.get("attn_factor"))
            if attn is not None:
                gw.add_rope_scaling_yarn_attn_factor(float(attn))
            if full.get("beta_fast") is not None:
                gw.add_rope_scaling_yarn_beta_fast(float(full["beta_fast"]))
            if full.get("beta_slow") is not None:
                gw.add_rope_scaling_yarn_beta_slow(float(full["beta_slow"]))
        elif rope_type not in (None, "default", "llama3"):
            raise HaruhiError(f"RoPE scaling type {rope_type!r} of this checkpoint is not supported by haruhi-convert")
        self._add_swa_pattern(gw)
        if self.spec.extra_metadata:
            self.spec.extra_metadata(self, gw)
        gw.add_file_type(int(file_type))
        gw.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def _add_swa_pattern(self, gw: gguf.GGUFWriter) -> None:
        """Write the per-layer sliding-window pattern only where it differs from llama.cpp's default
        for the architecture, so older llama.cpp builds (which read a number there) still load the file."""
        layer_types = self.hp.get("layer_types")
        defaults = {"gpt-oss": 2, "gemma3": 6}
        if not layer_types or self.spec.key not in defaults:
            return
        n = defaults[self.spec.key]
        is_swa = [t == "sliding_attention" for t in layer_types]
        if is_swa != [(i % n) < n - 1 for i in range(len(is_swa))]:
            gw.add_sliding_window_pattern(is_swa)

    # --- tensors -------------------------------------------------------------------------------
    def _target(self, param: str) -> LoraTarget | None:
        if self.adapter is None:
            return None
        t = self.adapter.targets.get(param)
        if t is not None:
            self.used_targets.add(param)
        return t

    def _dense_qtype(self, gguf_name: str, shape: tuple[int, ...]) -> QT:
        if (len(shape) == 1 or gguf_name.endswith((".bias", "_norm.weight", "ffn_gate_inp.weight"))
                or "rope_freqs" in gguf_name):
            return QT.F32
        main = QT.Q8_0 if self.out_type == "mxfp4" else MAIN_QTYPE.get(self.out_type, QT.BF16)
        if main in quant.BLOCKED and not quant.row_fits(shape[-1], main):
            return QT.F16  # as llama.cpp's converter: rows that do not hold whole blocks stay F16
        return main

    def _expert_qtype(self, shape: tuple[int, ...]) -> QT:
        main = QT.MXFP4 if self.out_type == "mxfp4" else MAIN_QTYPE.get(self.out_type, QT.BF16)
        if main in quant.BLOCKED and not quant.row_fits(shape[-1], main):
            return QT.F16
        return main

    def gguf_name(self, hf_name: str) -> str:
        name = hf_name.replace("language_model.", "") if "language_model." in hf_name else hf_name
        mapped = self.name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise HaruhiError(f"tensor {hf_name} of the base model has no llama.cpp counterpart for {self.spec.label}")
        return mapped

    def plan(self) -> list[OutTensor]:
        out: list[OutTensor] = []
        skip = (".rotary_emb.inv_freq", ".attention.masked_bias")
        handled: set[str] = set()
        names = sorted(self.ckpt.tensors, key=_tensor_order)
        for name in names:
            if name in handled or name.endswith(skip):
                continue
            if any(part in name for part in ("vision_tower", "multi_modal_projector", "vision_model", "audio")):
                continue
            if self.spec.moe and ".mlp.experts." in name:
                out.extend(self._plan_experts(name, handled))
                continue
            out.append(self._plan_dense(name))
        if self.spec.key == "llama":
            out.extend(self._llama_rope_freqs())
        return out

    def _plan_dense(self, name: str) -> OutTensor:
        info = self.ckpt.info(name)
        hf = name + ".weight" if name.endswith(".sinks") else name
        gname = self.gguf_name(hf)
        shape = info.shape
        qtype = self._dense_qtype(gname, shape)
        target = self._target(name)
        replaced = self.adapter is not None and name in self.adapter.replacements
        if replaced:
            self.used_targets.add(name)
        shift = self.spec.norm_shift if gname.endswith("norm.weight") else 0.0
        bias_target = self._target(name[: -len(".bias")] + ".weight") if name.endswith(".bias") else None
        if bias_target is not None and bias_target.bias_key is None:
            bias_target = None
        permute = None
        if self.spec.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            permute = self.n_head
        elif self.spec.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            permute = self.n_head_kv
        ckpt, adapter = self.ckpt, self.adapter

        def produce() -> Iterator[Chunk]:
            rows = shape[0] if shape else 1
            if len(shape) <= 1 or permute is not None:
                step = rows
            else:
                step = max(1, ROW_CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
            for start in range(0, rows, step):
                stop = min(rows, start + step)
                t = adapter.replacement(name, start, stop) if replaced else ckpt.read_f32(name, start, stop)
                if target is not None:
                    t = t + adapter.delta_rows(target, start, stop)
                if bias_target is not None:
                    t = t + adapter.bias_delta(bias_target)
                if shift:
                    t = t + shift
                if permute is not None:
                    t = _permute_rows(t, permute)
                yield t
            if target is not None:
                adapter.release(target)

        return OutTensor(gname, shape, qtype, produce, name)

    def _plan_experts(self, name: str, handled: set[str]) -> list[OutTensor]:
        """gpt-oss experts: one HF parameter (bf16 or MXFP4 blocks+scales) -> GGUF expert tensors."""
        module, _, leaf = name.rpartition(".")
        base = leaf.removesuffix("_blocks").removesuffix("_scales")
        if base.endswith("_bias"):
            handled.add(name)
            return self._plan_expert_bias(module, base)
        param = f"{module}.{base}"
        mxfp4 = f"{param}_blocks" in self.ckpt
        handled.update({param, f"{param}_blocks", f"{param}_scales"})
        if mxfp4:
            n_exp, rows, nb, _ = self.ckpt.info(f"{param}_blocks").shape
            cols = nb * 32  # stored (E, out, in)
        else:
            n_exp, cols, rows = self.ckpt.info(param).shape  # stored (E, in, out)
        target = self._target(param)
        bid = layer_index(name)
        parts = expert_parts(base)
        if not parts:
            raise HaruhiError(f"unexpected expert tensor {name} in the base model")
        out_rows = rows // len(parts)
        result = []
        for kind, rows_sel in parts:
            gname = gguf.TENSOR_NAMES[kind].format(bid=bid) + ".weight"
            shape = (n_exp, out_rows, cols)
            qtype = self._expert_qtype(shape)
            producer = self._expert_producer(param, mxfp4, target, rows_sel, qtype, n_exp)
            result.append(OutTensor(gname, shape, qtype, producer, param))
        return result

    def _expert_producer(self, param: str, mxfp4: bool, target: LoraTarget | None, rows_sel: slice,
                         qtype: QT, n_exp: int) -> Callable[[], Iterator[Chunk]]:
        ckpt, adapter = self.ckpt, self.adapter

        def produce() -> Iterator[Chunk]:
            for e in range(n_exp):
                if mxfp4:
                    blocks = ckpt.read(f"{param}_blocks", e, e + 1)[0][rows_sel]
                    scales = ckpt.read(f"{param}_scales", e, e + 1)[0][rows_sel]
                    if target is None and qtype == QT.MXFP4:
                        yield quant.hf_mxfp4_to_ggml(blocks, scales)  # lossless: only bits move
                        continue
                    w = quant.dequantize_hf_mxfp4(blocks, scales)  # (out, in)
                else:
                    w = ckpt.read_f32(param, e, e + 1)[0].T[rows_sel]  # (in, out) -> (out, in)
                if target is not None:
                    lhs, rhs = adapter.expert_factors(target, e)  # delta.T = scaling * lhs @ rhs
                    w = w + (lhs[rows_sel] @ rhs) * target.scaling
                yield w.contiguous()
            if target is not None:
                adapter.release(target)

        return produce

    def _plan_expert_bias(self, module: str, base: str) -> list[OutTensor]:
        name = f"{module}.{base}"
        n_exp, width = self.ckpt.info(name).shape
        bid = layer_index(name)
        parts = expert_parts(base)
        if not parts:
            raise HaruhiError(f"unexpected expert tensor {name} in the base model")
        cols = width // len(parts)
        result = []
        for kind, sel in parts:
            gname = gguf.TENSOR_NAMES[kind].format(bid=bid) + ".bias"

            def produce(sel=sel) -> Iterator[Chunk]:
                yield self.ckpt.read_f32(name)[:, sel].contiguous()

            result.append(OutTensor(gname, (n_exp, cols), QT.F32, produce, name))
        return result

    def _llama_rope_freqs(self) -> list[OutTensor]:
        rope = _rope_parameters(self.hp)
        rope = rope.get("full_attention", rope)
        if str(rope.get("rope_type", "")).lower() != "llama3":
            return []
        base = float(rope.get("rope_theta", 10000.0))
        dim = self.head_dim
        freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        factor = float(rope.get("factor", 8.0))
        low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
        old_ctx = float(rope.get("original_max_position_embeddings", 8192))
        factors = []
        for freq in freqs.tolist():
            wavelen = 2 * math.pi / freq
            if wavelen < old_ctx / high:
                factors.append(1.0)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        data = torch.tensor(factors, dtype=torch.float32)
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        return [OutTensor(name, tuple(data.shape), QT.F32, lambda: iter([data]), "rope_scaling")]

    def unused_targets(self) -> list[str]:
        if self.adapter is None:
            return []
        wanted = set(self.adapter.targets) | set(self.adapter.replacements)
        return sorted(wanted - self.used_targets)


def _permute_rows(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate-half q/k rows -> ggml's interleaved RoPE order (llama.cpp's ``LlamaModel.permute``)."""
    shape = t.shape
    return t.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _tensor_order(name: str) -> tuple[int, int, str]:
    """Embeddings first, then layer by layer, then the output head (the order llama.cpp files use)."""
    if ".layers." in name:
        try:
            return (1, layer_index(name), name)
        except ValueError:
            pass
    return (0 if "embed" in name else 2, 0, name)
