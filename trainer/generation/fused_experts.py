"""gpt-oss's experts for inference with fewer passes over memory (opt-in: the continuous engine's
``fused_experts``).

transformers' grouped-GEMM experts forward is written for training with expert parallelism: besides the two
grouped GEMMs it materialises each pair's bias rows, masks sentinel rows three times and runs the gated
activation as a dozen elementwise kernels over [pairs, 5760] tensors, memory traffic comparable to the
GEMMs' own time when prompts are prefilled. Here the GEMMs are the same (``torch``'s grouped GEMM through
transformers' dispatcher); bias, clamp, gate and routing weight are each one fused kernel on CUDA
(``torch.compile``; eager elsewhere, same math), and nothing is masked (no expert parallelism at inference).
"""

from __future__ import annotations

#: Our experts implementation name (registered with transformers on first use).
FUSED_EXPERTS = "haruhi_fused"

_compiled: dict[str, object] = {}


def _gate(gate_up, bias, expert_ids, alpha: float, limit: float):
    """gpt-oss's clamped SwiGLU of ``gate_up`` (+ each row's expert bias); gate and up are interleaved."""
    import torch

    gate_up = gate_up + bias[expert_ids]
    gate = gate_up[..., ::2].clamp(max=limit)
    up = gate_up[..., 1::2].clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


def _weigh(down, bias, expert_ids, weights):
    """Each pair's expert output (+ its bias) times its routing weight."""
    return (down + bias[expert_ids]) * weights[:, None]


def _kernels(device):
    """The two elementwise steps: compiled on CUDA (one kernel each, any number of rows), eager elsewhere."""
    if device.type != "cuda":
        return _gate, _weigh
    if "gate" not in _compiled:
        import torch

        _compiled["gate"] = torch.compile(_gate, dynamic=True, fullgraph=True)
        _compiled["weigh"] = torch.compile(_weigh, dynamic=True, fullgraph=True)
    return _compiled["gate"], _compiled["weigh"]


def fused_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers' experts interface: ``hidden_states`` [tokens, hidden], each token's top-k experts and
    routing weights; returns [tokens, hidden]."""
    import torch
    from transformers.integrations.moe import _grouped_mm

    tokens, hidden = hidden_states.shape
    top_k = top_k_index.shape[-1]
    expert_ids, order = torch.sort(top_k_index.reshape(-1))
    rows = hidden_states.index_select(0, order // top_k)
    counts = torch.histc(expert_ids.float() if hidden_states.device.type != "cuda" else expert_ids.int(),
                         bins=self.num_experts, min=0, max=self.num_experts - 1)
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
    gate, weigh = _kernels(hidden_states.device)
    up = _grouped_mm(rows, self.gate_up_proj, offsets)
    inner = gate(up, self.gate_up_proj_bias, expert_ids, self.alpha, self.limit).to(rows.dtype)
    down = _grouped_mm(inner, self.down_proj, offsets)
    weighted = weigh(down, self.down_proj_bias, expert_ids, top_k_weights.reshape(-1)[order]).to(rows.dtype)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return weighted[inverse].view(tokens, top_k, hidden).sum(dim=1).to(hidden_states.dtype)


def register_fused_experts() -> str:
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(FUSED_EXPERTS, fused_experts_forward)
    return FUSED_EXPERTS


def warm_up(model) -> None:
    """Compile the fused kernels before a run (and before CUDA graphs capture them): one small forward of the
    first experts module."""
    import torch

    experts = next(m for m in model.modules() if hasattr(m, "gate_up_proj") and hasattr(m, "num_experts"))
    device = experts.gate_up_proj.device
    generator = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(16, experts.gate_up_proj.shape[1], device=device, generator=generator,
                         dtype=experts.gate_up_proj.dtype)
    index = torch.randint(0, experts.num_experts, (16, 4 if experts.num_experts >= 4 else 1), device=device,
                          generator=generator)
    weights = torch.full(index.shape, 1.0 / index.shape[1], device=device, dtype=hidden.dtype)
    fused_experts_forward(experts, hidden, index, weights)
