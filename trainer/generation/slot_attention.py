"""Attention over a KV cache of fixed slots, for continuous batching with shared prompt prefixes.

The cache holds ``slots`` sequences of up to ``capacity`` tokens each (plus one scratch slot for idle decode
rows), in every attention layer, and a token's cache index *is* its position: slot ``s`` keeps position
``p`` at row ``s * capacity + p``. So a sliding window is a window of positions for every layer and every
row, whatever was copied or computed where; no padding ever sits inside a sequence. A forward is a packed
stream of tokens from several sequences (prompt chunks and one-token decode steps alike) described by a
:class:`SlotBatch`; :func:`slot_attention` (registered with transformers as ``haruhi_slots``) writes the
new keys/values into their slots, then attends each query to its own slot up to its position.

Two kernels compute the same thing: ``reference`` (matmuls, any device; exact gpt-oss sink semantics, the
one the CPU tests check) and ``flash`` (CUDA: FlashAttention-2's variable-length kernel through
``torch.ops.aten._flash_attention_forward``, reading each sequence's keys in place, windows included; the
sinks are applied afterwards from the returned log-sum-exp: ``out * sigmoid(lse - sink)`` is exactly
softmax over [scores, sink]). :func:`check_flash` compares them on the device before ``flash`` is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: Our attention implementation name for the slot engine (registered with transformers on first use).
SLOT_ATTENTION = "haruhi_slots"
KERNELS = ("auto", "flash", "reference")


class SlotCache:
    """Keys and values of every attention layer: ``[layers, (slots + 1) * capacity, kv_heads, head_dim]``.

    Zero-filled so an idle row that reads the scratch slot stays finite."""

    def __init__(self, *, layers: int, slots: int, capacity: int, kv_heads: int, head_dim: int, dtype, device):
        import torch

        self.layers, self.slots, self.capacity = layers, slots, capacity
        self.scratch = slots  # the extra slot idle decode rows write to
        shape = (layers, (slots + 1) * capacity, kv_heads, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    @staticmethod
    def bytes_per_token(*, layers: int, kv_heads: int, head_dim: int, element_size: int) -> int:
        return 2 * layers * kv_heads * head_dim * element_size

    def copy(self, source: int, target: int, begin: int, end: int) -> None:
        """Copy positions ``[begin, end)`` of slot ``source`` to slot ``target`` (a shared prompt prefix)."""
        if end <= begin:
            return
        src = slice(source * self.capacity + begin, source * self.capacity + end)
        dst = slice(target * self.capacity + begin, target * self.capacity + end)
        self.keys[:, dst] = self.keys[:, src]
        self.values[:, dst] = self.values[:, src]


@dataclass
class SlotBatch:
    """One forward's packed tokens: which slot and position each has, and per sequence (a run of tokens of
    one slot) where its queries start and how many keys it sees. Tensors live on the model's device."""

    cache: SlotCache
    kernel: str                 # "flash" or "reference"
    input_ids: object           # [tokens] long
    positions: object           # [tokens] long: each token's position in its sequence
    write_index: object         # [tokens] long: slot * capacity + position, where each new key/value goes
    cu_q: object                # [sequences + 1] int32: token offsets of the sequences
    k_start: object             # [sequences + 1] int32: slot * capacity (cache row of position 0), then a pad
    kv_len: object              # [sequences] int32: keys each sequence sees (its last position + 1)
    seq_slot: object            # [sequences] long
    max_q: int                  # the longest sequence's token count (an upper bound is fine)
    decode: bool                # every sequence is one token: the batched reference path applies
    #: Host copies for the reference prompt path: (slot, first position, tokens, offset in the pack) per sequence.
    spans: tuple[tuple[int, int, int, int], ...] | None = None
    #: Keys the batched decode reference reads per row (the cache capacity under CUDA graphs).
    read: int = 0
    #: [sequences wanting logits] long: pack offsets of the tokens whose logits are kept (None: all).
    logits_index: object = None


def slot_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, *, slot_batch: SlotBatch,
                   sliding_window: int | None = None, softcap: float | None = None, **kwargs):
    """transformers' attention interface for the slot engine: store the new keys/values, then attend.

    ``query`` is ``[1, heads, tokens, dim]`` (one packed row); returns ``[1, tokens, heads, dim]``."""
    if softcap:
        raise ValueError("haruhi_slots does not implement attention logit soft-capping")
    batch = slot_batch
    layer = module.layer_idx
    keys, values = batch.cache.keys[layer], batch.cache.values[layer]
    keys.index_copy_(0, batch.write_index, key[0].transpose(0, 1))
    values.index_copy_(0, batch.write_index, value[0].transpose(0, 1))
    q = query[0].transpose(0, 1)  # [tokens, heads, dim]
    sinks = getattr(module, "sinks", None)
    window = sliding_window or None
    if batch.kernel == "flash":
        out = flash_attend(q, keys, values, batch, scaling, window, sinks)
    elif batch.decode:
        out = reference_decode(q, keys, values, batch, scaling, window, sinks)
    else:
        out = reference_prefill(q, keys, values, batch, scaling, window, sinks)
    return out.unsqueeze(0), None


# -- reference kernel -----------------------------------------------------------------------------

def _attend(q, k, v, visible, scaling, sinks):
    """Softmax attention of ``q`` [n, L, heads, dim] to ``k``/``v`` [n, K, kv_heads, dim] where ``visible``
    [n, L, K] says so, with gpt-oss's sinks (one extra logit per head, as eager attention adds it)."""
    import torch

    n, length, heads, dim = q.shape
    kv_heads, span = k.shape[2], k.shape[1]
    groups = heads // kv_heads
    qh = q.permute(0, 2, 1, 3).reshape(n, kv_heads, groups * length, dim)
    scores = torch.matmul(qh, k.permute(0, 2, 3, 1)) * scaling  # [n, kv, groups*L, K]
    scores = scores.reshape(n, kv_heads, groups, length, span)
    scores = scores.masked_fill(~visible[:, None, None], torch.finfo(scores.dtype).min)
    if sinks is not None:
        sink = sinks.to(scores.dtype).reshape(1, kv_heads, groups, 1, 1).expand(n, -1, -1, length, 1)
        combined = torch.cat([scores, sink], dim=-1)
        combined = combined - combined.amax(dim=-1, keepdim=True)
        probs = torch.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    probs = probs.reshape(n, kv_heads, groups * length, span).to(v.dtype)
    out = torch.matmul(probs, v.permute(0, 2, 1, 3))  # [n, kv, groups*L, dim]
    return out.reshape(n, heads, length, dim).permute(0, 2, 1, 3)


def reference_prefill(q, keys, values, batch: SlotBatch, scaling, window, sinks):
    """Sequence by sequence: each chunk of queries against its slot's keys up to its last position."""
    import torch

    outs = []
    capacity = batch.cache.capacity
    for slot, start, length, offset in batch.spans:
        end = start + length
        low = 0 if window is None else max(0, start - window + 1)
        base = slot * capacity
        k = keys[base + low: base + end][None]
        v = values[base + low: base + end][None]
        qpos = torch.arange(start, end, device=q.device)[:, None]
        kpos = torch.arange(low, end, device=q.device)[None, :]
        visible = kpos <= qpos
        if window is not None:
            visible &= qpos - kpos < window
        outs.append(_attend(q[offset: offset + length][None], k, v, visible[None], scaling, sinks)[0])
    return torch.cat(outs, dim=0)


def reference_decode(q, keys, values, batch: SlotBatch, scaling, window, sinks):
    """One query per sequence, all at once (fixed shapes, so it can be captured in a CUDA graph)."""
    import torch

    capacity = batch.cache.capacity
    kv_len = batch.kv_len.long()[:, None]
    if window is None:
        kpos = torch.arange(batch.read, device=q.device)[None, :]
        visible = kpos < kv_len
    else:
        kpos = kv_len - window + torch.arange(window, device=q.device)[None, :]
        visible = kpos >= 0
    rows = batch.seq_slot[:, None] * capacity + kpos.clamp(min=0, max=capacity - 1)
    k, v = keys[rows], values[rows]  # [n, K, kv, dim]
    return _attend(q[:, None], k, v, visible[:, None], scaling, sinks)[:, 0]


# -- flash kernel (CUDA) ------------------------------------------------------------------------------

def flash_attend(q, keys, values, batch: SlotBatch, scaling, window, sinks):
    """FlashAttention-2 varlen: queries packed, keys read in place from each sequence's slot (``k_start``,
    ``kv_len``), causal aligned to the end of each sequence's keys, ``window`` positions to the left."""
    import torch

    tokens, heads = q.shape[0], q.shape[1]
    # max_q >= 2 keeps FlashAttention off its single-query path that regroups heads (and the lse with them).
    out, lse = flash_kernel()(
        q.contiguous(), keys, values, batch.cu_q, batch.k_start, max(batch.max_q, 2), batch.cache.capacity,
        0.0, True, False, scale=scaling, window_size_left=None if window is None else window - 1,
        window_size_right=None, seqused_k=batch.kv_len)[:2]
    if sinks is None:
        return out
    if tuple(lse.shape) == (heads, tokens):
        lse = lse.transpose(0, 1)
    elif lse.dim() == 3 and lse.shape[0] == batch.cu_q.shape[0] - 1 and lse.shape[1] == heads:
        # older FlashAttention builds: [sequences, heads, longest sequence], padded
        token = torch.arange(tokens, device=q.device)
        seq = torch.searchsorted(batch.cu_q[1:].long(), token, right=True)
        lse = lse[seq, :, token - batch.cu_q[seq].long()]
    else:
        raise RuntimeError(f"unexpected log-sum-exp shape {tuple(lse.shape)} from FlashAttention")
    keep = torch.sigmoid(lse - sinks.float()[None, :])  # [tokens, heads]
    return (out.float() * keep[..., None]).to(out.dtype)


def flash_kernel():
    """torch's FlashAttention-2 forward (``aten::_flash_attention_forward``, in torch since 2.5 with varlen,
    windows and ``seqused_k``)."""
    import torch

    return torch.ops.aten._flash_attention_forward


def flash_available(device) -> bool:
    import torch

    return (device.type == "cuda" and hasattr(torch.ops.aten, "_flash_attention_forward")
            and torch.cuda.get_device_capability(device) >= (8, 0))


def check_flash(*, heads: int, kv_heads: int, head_dim: int, dtype, device, sinks: bool) -> str | None:
    """Run ``flash`` against ``reference`` (in float32, on the same rounded inputs) on random data shaped like
    the model: prompt chunks that start mid-slot, decode rows, slots out of order, a window and none.
    Returns why not to use it, or None."""
    import torch

    if dtype not in (torch.float16, torch.bfloat16):
        return f"FlashAttention needs fp16/bf16 weights, not {dtype}"
    try:
        generator = torch.Generator(device=device).manual_seed(0)
        caches = {kernel: SlotCache(layers=1, slots=3, capacity=192, kv_heads=kv_heads, head_dim=head_dim,
                                    dtype=dtype if kernel == "flash" else torch.float32, device=device)
                  for kernel in ("flash", "reference")}
        for name in ("keys", "values"):
            values = torch.randn(getattr(caches["flash"], name).shape, device=device, generator=generator)
            getattr(caches["flash"], name).copy_(values)
            getattr(caches["reference"], name).copy_(getattr(caches["flash"], name))
        sink = torch.randn(heads, device=device, generator=generator).to(dtype) if sinks else None
        worst = 0.0
        for layout in ([(2, 0, 70), (0, 100, 45), (1, 30, 1)], [(1, 150, 1), (2, 9, 1), (0, 64, 1)]):
            n = sum(length for _, _, length in layout)
            q = torch.randn(1, heads, n, head_dim, device=device, generator=generator).to(dtype)
            k = torch.randn(1, kv_heads, n, head_dim, device=device, generator=generator).to(dtype)
            v = torch.randn(1, kv_heads, n, head_dim, device=device, generator=generator).to(dtype)
            for window in (None, 48):
                outs = {}
                for kernel, cache in caches.items():
                    exact = kernel == "reference"
                    module = type("Probe", (), {"layer_idx": 0,
                                                "sinks": None if sink is None else sink.float() if exact else sink})()
                    batch = make_batch(cache, kernel, layout, device)
                    outs[kernel] = slot_attention(module, *(t.float() if exact else t for t in (q, k, v)), None,
                                                  head_dim ** -0.5, slot_batch=batch, sliding_window=window)[0].float()
                # bf16 rounds each output (twice, with the sink applied after): 2% of each value is rounding
                exact, error = outs["reference"], (outs["flash"] - outs["reference"]).abs()
                excess = (error - 0.02 * exact.abs()).max().item() / max(exact.abs().mean().item(), 1e-6)
                worst = max(worst, excess)
        if worst > 0.03:
            return f"FlashAttention differs from the reference attention ({worst:.3f} of the mean beyond rounding)"
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use it
        return f"FlashAttention unavailable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def make_batch(cache: SlotCache, kernel: str, layout, device, *, ids=None, logits: Sequence[bool] | None = None,
               read: int | None = None) -> SlotBatch:
    """A :class:`SlotBatch` for sequences ``layout`` = [(slot, first position, tokens), ...] (eager forwards),
    with the packed ``ids`` and, per sequence, whether the logits of its last token are wanted; one host to
    device copy."""
    import numpy as np
    import torch

    table = np.asarray(layout, dtype=np.int64).reshape(-1, 3)
    slots, starts, lengths = table[:, 0], table[:, 1], table[:, 2]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n, m = int(offsets[-1]), len(layout)
    positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(n)
    ids = np.zeros(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    keep = offsets[1:][np.asarray(logits, dtype=bool)] - 1 if logits is not None else np.empty(0, np.int64)
    kv_len = starts + lengths
    packed = np.concatenate([ids, positions, np.repeat(slots, lengths) * cache.capacity + positions, offsets,
                             slots * cache.capacity, [0], kv_len, slots, keep])
    parts = torch.split(torch.from_numpy(packed).to(device), [n, n, n, m + 1, m + 1, m, m, len(keep)])
    decode = bool((lengths == 1).all())
    spans = None if decode and kernel == "reference" or kernel == "flash" else tuple(
        zip(slots.tolist(), starts.tolist(), lengths.tolist(), offsets[:-1].tolist()))
    return SlotBatch(cache=cache, kernel=kernel, input_ids=parts[0], positions=parts[1], write_index=parts[2],
                     cu_q=parts[3].int(), k_start=parts[4].int(), kv_len=parts[5].int(), seq_slot=parts[6],
                     max_q=int(lengths.max()), decode=decode, spans=spans, read=read or int(kv_len.max()),
                     logits_index=parts[7] if logits is not None else None)


def register_slot_attention() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SLOT_ATTENTION, slot_attention)
    AttentionMaskInterface.register(SLOT_ATTENTION, sdpa_mask)  # never used: the engine passes its own masks
    return SLOT_ATTENTION
