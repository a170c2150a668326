"""A PEFT LoRA adapter, resolved against its base checkpoint, and the exact merge math.

Two kinds of LoRA targets are handled:

* modules (``target_modules``: ``nn.Linear``, ``nn.Embedding``): delta = scaling * B @ A, as PEFT's
  ``Linear.get_delta_weight`` (for an embedding the delta is transposed: ``(B @ A).T``);
* parameters (``target_parameters``, PEFT's ``ParamWrapper``): gpt-oss's 3-D expert weights
  ``(experts, in, out)``. PEFT stores ``lora_A`` as ``(r * experts, in)`` (expert ``e`` is rows
  ``e*r:(e+1)*r``) and ``lora_B`` as ``(out, r * experts)`` (expert ``e`` is columns ``e::experts``),
  and the delta of expert ``e`` is ``scaling * (B_e @ A_e)``, transposed into the parameter's
  ``(in, out)`` layout unless the model class stores experts as ``(out, in)`` (PEFT then swaps in
  and out; see ``ParamWrapper.get_delta_weight``). Several wrapped parameters of one module nest:
  the first one wrapped sits deepest (``experts.base_layer.lora_A``), the next at ``experts.lora_A``.

scaling = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA; ``rank_pattern`` and ``alpha_pattern``
override r and alpha per module, as in PEFT.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from haruhi_tui.core.errors import HaruhiError

from .checkpoint import Checkpoint, SafetensorsDir, load_json

_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)(?P<nest>(?:\.base_layer)*)\."
    r"(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[A-Za-z_]\w*)??(?:\.(?P<kind>weight|bias))?$"
)


@dataclass
class LoraTarget:
    """The LoRA factors for one base parameter (``param`` is its name in the base checkpoint)."""

    param: str
    module: str
    kind: str  # "linear", "embedding" or "experts"
    a_key: str
    b_key: str
    scaling: float
    rank: int
    experts: int = 1
    swapped: bool = False  # experts stored (experts, out, in): PEFT's swapped in/out
    bias_key: str | None = None
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


class Adapter:
    """A PEFT LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)."""

    def __init__(self, directory: str | Path, base: Checkpoint, expert_param_order: tuple[str, ...] = ()) -> None:
        directory = Path(directory)
        if not directory.exists():
            raise HaruhiError(f"adapter folder not found: {directory}")
        if not directory.is_dir():
            raise HaruhiError("--adapter must be a PEFT adapter folder (adapter_config.json + "
                              f"adapter_model.safetensors), got a file: {directory}")
        self.directory = directory
        self.config = load_json(directory / "adapter_config.json", "adapter_config.json")
        weights = directory / "adapter_model.safetensors"
        if not weights.is_file():
            if (directory / "adapter_model.bin").is_file():
                raise HaruhiError(f"{directory} has adapter_model.bin only; re-save the adapter with safetensors "
                                  "(save_pretrained(safe_serialization=True))")
            raise HaruhiError(f"adapter weights not found: {weights}")
        self.files = SafetensorsDir(directory, [weights])
        self._check_config(base)
        self.targets: dict[str, LoraTarget] = {}
        self.replacements: dict[str, str] = {}  # base param -> adapter key (modules_to_save copies)
        self._resolve(base, expert_param_order)
        if not self.targets and not self.replacements:
            raise HaruhiError(f"{weights} holds no LoRA weights that apply to the base model")

    # --- configuration -------------------------------------------------------------------------
    def _check_config(self, base: Checkpoint) -> None:
        cfg = self.config
        peft_type = str(cfg.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise HaruhiError(f"the adapter is a {peft_type} adapter; haruhi-convert merges LoRA adapters only")
        if cfg.get("use_dora"):
            raise HaruhiError("DoRA adapters are not supported; merge it with PEFT (merge_and_unload) "
                              "and convert the merged model")
        for key in ("use_qalora", "use_bdlora"):
            if cfg.get(key):
                raise HaruhiError(f"adapters trained with {key} are not supported; "
                                  "merge with PEFT and convert the merged model")
        if cfg.get("trainable_token_indices"):
            raise HaruhiError("adapters with trainable_token_indices are not supported; "
                              "merge with PEFT and convert the merged model")
        if cfg.get("layer_replication"):
            raise HaruhiError("adapters with layer_replication are not supported")
        mapping = cfg.get("auto_mapping") or {}
        trained_on = mapping.get("base_model_class")
        if trained_on and base.architecture and trained_on != base.architecture:
            raise HaruhiError(
                f"adapter was trained on {trained_on} but --base is {base.architecture}; "
                "pass the base model the adapter was trained from"
            )
        self.alpha = float(cfg.get("lora_alpha", 8))
        self.default_r = int(cfg.get("r", 8))
        self.rslora = bool(cfg.get("use_rslora"))
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))

    def _pattern_value(self, patterns: dict[str, Any], module: str, default: Any) -> Any:
        for key, value in (patterns or {}).items():
            if module == key or module.endswith("." + key) or re.fullmatch(rf"(.*\.)?{key}", module):
                return value
        return default

    def _scaling(self, module: str, rank: int) -> float:
        alpha = float(self._pattern_value(self.config.get("alpha_pattern"), module, self.alpha))
        return alpha / math.sqrt(rank) if self.rslora else alpha / rank

    # --- resolution ----------------------------------------------------------------------------
    def _resolve(self, base: Checkpoint, expert_param_order: tuple[str, ...]) -> None:
        pairs: dict[tuple[str, str], dict[str, str]] = {}
        for key in self.files.tensors:
            m = _KEY.match(key)
            if m is None:
                bare = key.removeprefix("base_model.model.")
                bare = bare.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")
                bare = re.sub(r"(\.base_layer)+\.", ".", bare)  # embedding weights PEFT saves with the adapter
                if bare in base:
                    if self.files.info(key).shape != base.info(bare).shape:
                        raise HaruhiError(
                            f"adapter tensor {key} has shape {list(self.files.info(key).shape)} but the base's "
                            f"{bare} has {list(base.info(bare).shape)}; the adapter belongs to another model"
                        )
                    self.replacements[bare] = key
                    continue
                raise HaruhiError(f"adapter tensor {key} matches nothing in the base model ({base.architecture}); "
                                  "the adapter belongs to another model")
            slot = pairs.setdefault((m["module"], m["nest"]), {})
            which = m["which"]
            if m["kind"] == "bias":
                slot["bias"] = key
            else:
                slot["A" if which.endswith("A") else "B"] = key
                slot["embedding"] = "1" if "embedding" in which else slot.get("embedding", "")
        by_module: dict[str, list[tuple[int, dict[str, str]]]] = {}
        for (module, nest), slot in pairs.items():
            if "A" not in slot or "B" not in slot:
                raise HaruhiError(f"adapter is incomplete: {module} has only one of lora_A/lora_B; re-save the adapter")
            by_module.setdefault(module, []).append((nest.count(".base_layer"), slot))
        for module, slots in by_module.items():
            if len(slots) == 1 and f"{module}.weight" in base and not self._is_param_target(module):
                self._add_module_target(base, module, slots[0][1])
            else:
                self._add_param_targets(base, module, slots, expert_param_order)

    def _is_param_target(self, module: str) -> bool:
        return any(p.rpartition(".")[0] and module.endswith(p.rpartition(".")[0])
                   for p in self.config.get("target_parameters") or [])

    def _add_module_target(self, base: Checkpoint, module: str, slot: dict[str, str]) -> None:
        param = f"{module}.weight"
        shape = base.info(param).shape
        a, b = self.files.info(slot["A"]).shape, self.files.info(slot["B"]).shape
        embedding = bool(slot.get("embedding"))
        if embedding:
            rank, ok = a[0], len(shape) == 2 and a == (a[0], shape[0]) and b == (shape[1], a[0])
        else:
            if self.fan_in_fan_out:
                raise HaruhiError("adapters with fan_in_fan_out=True (Conv1D models) are not supported")
            rank, ok = a[0], len(shape) == 2 and a == (a[0], shape[1]) and b == (shape[0], a[0])
        if not ok:
            raise HaruhiError(
                f"adapter does not fit the base at {module}: base weight is {list(shape)}, "
                f"lora_A {list(a)}, lora_B {list(b)}; the adapter was trained on another model"
            )
        rank = int(self._pattern_value(self.config.get("rank_pattern"), module, rank))
        self.targets[param] = LoraTarget(
            param=param, module=module, kind="embedding" if embedding else "linear", a_key=slot["A"], b_key=slot["B"],
            scaling=self._scaling(module, rank), rank=rank, bias_key=slot.get("bias"),
        )

    def _param_shape(self, base: Checkpoint, param: str) -> tuple[int, ...] | None:
        """Logical shape of a (possibly MXFP4-stored) expert parameter: (experts, in, out)."""
        if param in base:
            return base.info(param).shape
        if f"{param}_blocks" in base:
            e, out, nb, _ = base.info(f"{param}_blocks").shape
            return (e, nb * 32, out)
        return None

    def _add_param_targets(self, base: Checkpoint, module: str, slots: list[tuple[int, dict[str, str]]],
                           order: tuple[str, ...]) -> None:
        wanted = [p.rpartition(".")[2] for p in self.config.get("target_parameters") or []
                  if module.endswith(p.rpartition(".")[0])]
        wanted = wanted or list(order)  # an adapter config that does not list its target_parameters
        candidates = [p for p in order if p in wanted] + [p for p in wanted if p not in order]
        candidates = [p for p in candidates if self._param_shape(base, f"{module}.{p}") is not None]
        if not candidates:
            raise HaruhiError(f"adapter targets {module}, which the base model ({base.architecture}) does not have; "
                              "the adapter belongs to another model")
        # deepest wrapper = first parameter wrapped = first in the module's definition order
        slots = sorted(slots, key=lambda s: -s[0])
        fits: list[list[tuple[str, bool]]] = []
        for _, slot in slots:
            a, b = self.files.info(slot["A"]).shape, self.files.info(slot["B"]).shape
            options = []
            for p in candidates:
                e, d1, d2 = self._param_shape(base, f"{module}.{p}")
                if a[0] % e or b[1] != a[0]:
                    continue
                if (a[1], b[0]) == (d1, d2):
                    options.append((p, False))
                if (a[1], b[0]) == (d2, d1):
                    options.append((p, True))
            fits.append(options)
        assigned = self._assign(module, slots, fits, candidates)
        for (_, slot), (p, swapped) in zip(slots, assigned):
            e = self._param_shape(base, f"{module}.{p}")[0]
            rank = self.files.info(slot["A"]).shape[0] // e
            rank = int(self._pattern_value(self.config.get("rank_pattern"), module, rank))
            if slot.get("bias"):
                raise HaruhiError(f"lora_bias on {module}.{p} is not supported for expert parameters")
            self.targets[f"{module}.{p}"] = LoraTarget(
                param=f"{module}.{p}", module=module, kind="experts", a_key=slot["A"], b_key=slot["B"],
                scaling=self._scaling(module, rank), rank=rank, experts=e, swapped=swapped,
            )

    def _assign(self, module, slots, fits, candidates) -> list[tuple[str, bool]]:
        """Pick (parameter, swapped) per wrapper: by shape, then by nesting order, one convention for all."""
        for options, (_, slot) in zip(fits, slots):
            if not options:
                a, b = self.files.info(slot["A"]).shape, self.files.info(slot["B"]).shape
                raise HaruhiError(
                    f"adapter does not fit the base at {module}: lora_A {list(a)} / lora_B {list(b)} match none of "
                    f"{', '.join(candidates)}; the adapter was trained on another model"
                )
        # the swap convention is a property of the model class, so it is shared by all parameters:
        # learn it from any wrapper whose shapes allow only one reading
        conventions = {sw for opts in fits for (_, sw) in opts}
        if len(conventions) > 1:
            decided = [{sw for _, sw in opts} for opts in fits if len({sw for _, sw in opts}) == 1]
            swapped = decided[0].pop() if decided else False
            fits = [[o for o in opts if o[1] == swapped] or opts for opts in fits]
        remaining = list(candidates)
        chosen: list[tuple[str, bool]] = []
        for options in fits:
            pick = next((o for o in options if o[0] in remaining and len({p for p, _ in options}) == 1), None)
            if pick is None:
                pick = next((o for p in remaining for o in options if o[0] == p), None)
            if pick is None:
                raise HaruhiError(f"adapter targets {module} more times than it has matching parameters; "
                                  "the adapter belongs to another model")
            remaining.remove(pick[0])
            chosen.append(pick)
        return chosen

    # --- math ----------------------------------------------------------------------------------
    def _tensor(self, target: LoraTarget, key: str) -> torch.Tensor:
        t = target._cache.get(key)
        if t is None:
            t = self.files.read_f32(key)
            target._cache[key] = t
        return t

    def release(self, target: LoraTarget) -> None:
        target._cache.clear()

    def delta_rows(self, target: LoraTarget, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the delta of a 2-D weight, in the base weight's layout (out, in)."""
        a, b = self._tensor(target, target.a_key), self._tensor(target, target.b_key)
        if target.kind == "embedding":  # A (r, vocab), B (dim, r): delta = (B @ A).T, rows are tokens
            return (b @ a[:, start:stop]).T * target.scaling
        return (b[start:stop] @ a) * target.scaling

    def bias_delta(self, target: LoraTarget) -> torch.Tensor | None:
        if not target.bias_key:
            return None
        return self._tensor(target, target.bias_key) * target.scaling

    def expert_factors(self, target: LoraTarget, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(lhs, rhs) such that the transpose of ``expert_delta`` is ``scaling * lhs @ rhs``.

        For gpt-oss, whose experts are stored (in, out), that transpose is the (out, in) matrix ggml
        multiplies with, so these are the factors of a GGUF LoRA adapter for the expert tensor.
        """
        a, b = self._tensor(target, target.a_key), self._tensor(target, target.b_key)
        e = target.experts
        a_e = a.reshape(e, -1, a.shape[-1])[expert]  # (r, in')
        b_e = b.reshape(b.shape[0], -1, e)[:, :, expert]  # (out', r)
        if target.swapped:  # delta = b_e @ a_e, its transpose = a_e.T @ b_e.T
            return a_e.T, b_e.T
        return b_e, a_e  # delta = (b_e @ a_e).T

    def expert_delta(self, target: LoraTarget, expert: int) -> torch.Tensor:
        """Delta of one expert in the parameter's own layout (e.g. (in, out) for gpt-oss)."""
        a, b = self._tensor(target, target.a_key), self._tensor(target, target.b_key)
        e = target.experts
        a_e = a.reshape(e, -1, a.shape[-1])[expert]
        b_e = b.reshape(b.shape[0], -1, e)[:, :, expert]
        p = (b_e @ a_e) * target.scaling  # (out', in')
        return p if target.swapped else p.T

    def replacement(self, param: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.files.read_f32(self.replacements[param], start, stop)

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for t in self.targets.values():
            kinds[t.kind] = kinds.get(t.kind, 0) + 1
        return {"targets": len(self.targets), "kinds": kinds, "full_copies": len(self.replacements),
                "r": self.default_r, "alpha": self.alpha, "rslora": self.rslora}
