"""Exact attention with gpt-oss's learned sinks on ``scaled_dot_product_attention``, for transformers.

transformers runs gpt-oss's sinks only on eager attention (the whole score matrix in memory) or flex
attention; evaluation prefills long role-play prompts in large batches, so we register our own
implementation: SDPA's fused memory-efficient kernel on CUDA for prompts, a grouped matmul for decoding.
:class:`~trainer.generation.hf.HFGenerator` picks it for gpt-oss (``attn="auto"``).
"""

from __future__ import annotations

#: Our attention implementation name (registered with transformers on first use).
SINK_ATTENTION = "haruhi_sinks"
#: Working memory one prefill attention call may use (rows are processed in slices to stay near it).
PREFILL_ATTENTION_BYTES = 1 << 30


def sink_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention with gpt-oss's learned sinks, exact, on ``scaled_dot_product_attention``.

    A sink is one extra logit per head in the softmax denominator. For a prompt (several queries),
    :func:`_sink_prefill` adds it as an extra key so SDPA's fused kernel computes softmax over
    [scores, sink] without materialising the scores, rows in slices so memory stays bounded for any
    batch. One new token (decoding) is a small grouped matmul instead, reading each cached key once
    rather than copying it per head. Padding rows stay finite: the sink is always visible.
    """
    import torch
    import torch.nn.functional as F

    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    sinks = module.sinks.to(query.dtype)
    mask = attention_mask
    if mask is not None:
        mask = mask[:, :, :, :k_len]
        if mask.dtype != torch.bool:
            mask = mask == 0
    if q_len == 1:
        q = query.reshape(batch, kv_heads, groups, dim)
        scores = torch.matmul(q, key.transpose(2, 3)) * scaling
        if mask is not None:
            scores = scores.masked_fill(~mask.reshape(mask.shape[0], 1, 1, k_len), torch.finfo(scores.dtype).min)
        combined = torch.cat([scores, sinks.reshape(1, kv_heads, groups, 1).expand(batch, -1, -1, -1)], dim=-1)
        combined = combined - combined.amax(dim=-1, keepdim=True)
        probs = F.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1]
        out = torch.matmul(probs.to(value.dtype), value)
        return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None
    # Rows at a time so the padded keys/values and the folded mask stay near PREFILL_ATTENTION_BYTES.
    per_row = (kv_heads * (k_len + 1) * (dim + 8) * query.element_size() * 2 + heads * q_len * (k_len + 1)
               + heads * q_len * (dim + 8) * query.element_size() * 2)
    step = max(1, PREFILL_ATTENTION_BYTES // per_row)
    outs = [_sink_prefill(query[i:i + step], key[i:i + step], value[i:i + step],
                          None if mask is None else mask[i:i + step] if mask.shape[0] > 1 else mask, sinks, scaling)
            for i in range(0, batch, step)]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
    return out.transpose(1, 2).contiguous(), None


def _sink_prefill(query, key, value, mask, sinks, scaling):
    """Several queries per row, in one fused SDPA call per KV head group.

    The query heads sharing a KV head are folded into the query axis (keys are never repeated per head),
    and the sink becomes an extra key: every key gets a 0 feature, the sink key a 1 there (value zero), and
    each query row carries its head's ``sink / scale`` in that feature, so the softmax runs over
    [scores, sink] exactly as gpt-oss defines it.
    """
    import torch
    import torch.nn.functional as F

    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    pad = (-(dim + 1)) % 8
    width = dim + 1 + pad
    q = query.reshape(batch, kv_heads, groups * q_len, dim)
    sink_feature = (sinks / scaling).reshape(1, kv_heads, groups, 1, 1).expand(batch, -1, -1, q_len, 1)
    q_ext = torch.cat([q, sink_feature.reshape(batch, kv_heads, groups * q_len, 1),
                       q.new_zeros(batch, kv_heads, groups * q_len, pad)], dim=-1)
    k_ext = key.new_zeros(batch, kv_heads, k_len + 1, width)
    k_ext[:, :, 0, dim] = 1
    k_ext[:, :, 1:, :dim] = key
    v_ext = value.new_zeros(batch, kv_heads, k_len + 1, width)
    v_ext[:, :, 1:, :dim] = value
    if mask is None:
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)[None, None]
    mask = mask.expand(-1, -1, q_len, -1)
    full = mask.new_ones(mask.shape[0], groups, q_len, k_len + 1)
    full[:, :, :, 1:] = mask  # broadcast over the folded heads
    full = full.reshape(mask.shape[0], 1, groups * q_len, k_len + 1)
    out = F.scaled_dot_product_attention(q_ext, k_ext, v_ext, attn_mask=full, scale=scaling)[..., :dim]
    return out.reshape(batch, heads, q_len, dim)


def _sink_mask(*args, **kwargs):
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register_sink_attention() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SINK_ATTENTION, sink_attention)
    AttentionMaskInterface.register(SINK_ATTENTION, _sink_mask)
    return SINK_ATTENTION

