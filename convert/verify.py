"""``--verify``: the same token ids through the written GGUF (llama.cpp) and the merged model (transformers).

The reference is built independently of our converter: transformers loads the base checkpoint and
PEFT merges the adapter (``merge_and_unload``), in float32. If our layouts, merge math or metadata
were wrong, the logits would differ by far more than rounding; if they are right, what remains is
the precision of the chosen ``--type`` (plus llama.cpp's own arithmetic: it rounds activations to
the weight type's partner type in matrix products; the comparison keeps llama.cpp's KV cache in f32).
One known difference is not ours: llama.cpp always rounds YaRN's correction range to whole
dimensions while gpt-oss's config asks transformers not to (``truncate: false``); the reference
follows llama.cpp there, since no GGUF key can express it.

Mixture-of-experts models add one effect: where two experts score almost alike, rounding can flip
which one a token is routed to and move that position's logits a lot. So the logit bound is on
the 90th percentile over positions (a few flipped routes may exceed it), and top-1 agreement is
counted where the reference's best token leads the second by more than twice the measured 90th
percentile difference (where two tokens are practically tied either is a faithful answer). Bounds,
in units of the reference logits' standard deviation (calibrated on tiny random models, where
relative rounding noise is largest):

======  ==============================  ==================
type    90th pct of max |Δlogit| / std  top-1 agreement
======  ==============================  ==================
f32     0.01                            100 %
f16     0.03                            100 %
bf16    0.1                             100 %
q8_0    0.25                            >= 95 %
mxfp4   0.6                             >= 90 %
q4_k_m  0.8                             >= 90 %
======  ==============================  ==================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from haruhi_tui.core.errors import HaruhiError

BOUNDS: dict[str, tuple[float, float]] = {
    "f32": (0.01, 1.0), "f16": (0.03, 1.0), "bf16": (0.1, 1.0), "q8_0": (0.25, 0.95),
    "mxfp4": (0.6, 0.90), "q4_k_m": (0.8, 0.90),
}
PROBE_TEXT = (
    "春日：「我对普通的人类没有兴趣。你们之中要是有外星人、未来人、异世界人或超能力者，就来找我吧！」"
    " Kyon sighed and looked out of the window; the classroom was quiet again."
)


@dataclass
class VerifyReport:
    out_type: str
    positions: int
    confident: int
    top1_agree: float
    max_abs_diff: float
    p90_abs_diff: float
    logit_std: float
    bound_rel: float
    bound_top1: float

    @property
    def rel_diff(self) -> float:
        """90th percentile over positions of the largest logit difference, in reference stds."""
        return self.p90_abs_diff / self.logit_std if self.logit_std else float("inf")

    @property
    def ok(self) -> bool:
        return self.rel_diff <= self.bound_rel and self.top1_agree >= self.bound_top1

    def line(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"{verdict}: top-1 agree {self.top1_agree:.0%} on {self.confident}/{self.positions} positions "
                f"(bound {self.bound_top1:.0%}), max |Δlogit| {self.max_abs_diff:.4g}, "
                f"90th pct {self.p90_abs_diff:.4g} "
                f"= {self.rel_diff:.3f} std (bound {self.bound_rel} for {self.out_type})")

    def failure(self) -> str:
        return (f"verification failed: llama.cpp and transformers disagree beyond what {self.out_type} explains "
                f"({self.line()})")

    def as_dict(self) -> dict:
        return {"positions": self.positions, "confident_positions": self.confident, "top1_agreement": self.top1_agree,
                "max_abs_logit_diff": self.max_abs_diff, "p90_abs_logit_diff": self.p90_abs_diff,
                "relative_diff": self.rel_diff, "ok": self.ok}


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def reference_logits(base: Path, adapter: Path | None, ids: list[int]) -> np.ndarray:
    """float32 logits of the PEFT-merged model for ``ids`` (transformers on CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    from .checkpoint import Checkpoint

    ckpt = Checkpoint(base)
    # MXFP4 blocks hold two values per byte; their scales become part of those values
    params = sum(t.numel * (2 if name.endswith("_blocks") else 0 if name.endswith("_scales") else 1)
                 for name, t in ckpt.tensors.items())
    need = params * 4 * 1.2
    if need > _available_ram():
        raise HaruhiError(
            f"--verify needs about {need / 2**30:.0f} GiB of RAM for the float32 reference model and "
            f"{_available_ram() / 2**30:.0f} GiB is available; run the check on a larger machine or leave out --verify"
        )
    config = AutoConfig.from_pretrained(base)
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "yarn" and rope.get("truncate") is False:
        rope["truncate"] = True  # llama.cpp always rounds YaRN's correction range (ggml_rope_yarn_corr_dims)
    kwargs = {"dtype": torch.float32, "config": config}
    if getattr(config, "quantization_config", None):
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    return logits


def gguf_logits(path: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    from llama_cpp import Llama
    from llama_cpp._utils import suppress_stdout_stderr

    kwargs = {"lora_path": str(lora)} if lora else {}
    with suppress_stdout_stderr(disable=False):
        llm = Llama(model_path=str(path), n_ctx=max(64, len(ids) + 8), n_batch=max(64, len(ids) + 8), logits_all=True,
                    verbose=False, n_threads=os.cpu_count() or 2, type_k=0, type_v=0, **kwargs)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def tokenize(path: Path, text: str = PROBE_TEXT) -> list[int]:
    from llama_cpp import Llama
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):
        llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    finally:
        llm.close()


def compare(ref: np.ndarray, got: np.ndarray, out_type: str) -> VerifyReport:
    bound_rel, bound_top1 = BOUNDS.get(out_type.removeprefix("lora-"), BOUNDS["q8_0"])
    n = min(len(ref), len(got))
    ref, got = ref[:n, : got.shape[1]], got[:n, : ref.shape[1]]
    std = float(ref.std())
    per_position = np.abs(ref - got).max(axis=1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    confident = margin > 2 * float(np.quantile(per_position, 0.9))
    agree = ref.argmax(1) == got.argmax(1)
    top1 = float(agree[confident].mean()) if confident.any() else 1.0
    return VerifyReport(out_type, n, int(confident.sum()), top1, float(per_position.max()),
                        float(np.quantile(per_position, 0.9)), std, bound_rel, bound_top1)


def verify_gguf(path: Path, base: Path, adapter: Path | None, out_type: str, *, adapter_only: bool = False,
                base_gguf: Path | None = None) -> VerifyReport:
    """Compare the written GGUF (or base GGUF + adapter GGUF) with transformers + PEFT on one probe text."""
    if adapter_only:
        if base_gguf is None:
            raise HaruhiError("--verify with --adapter-only needs --base-gguf: "
                              "a GGUF of the base model to apply the adapter to")
        ids = tokenize(base_gguf)
        got = gguf_logits(base_gguf, ids, lora=path)
    else:
        ids = tokenize(path)
        got = gguf_logits(path, ids)
    ref = reference_logits(base, adapter, ids)
    return compare(ref, got, out_type)
