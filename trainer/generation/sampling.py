"""Picking the next token from logits on transformers: greedy, or LLaMA-Factory's top-k / top-p sampling."""

from __future__ import annotations

from .decoding import DecodingOptions


def select_tokens(logits, options: DecodingOptions, generator):
    """One token per row of ``logits`` [rows, vocab]."""
    import torch

    if options.sampling == "greedy":
        return logits.argmax(dim=-1)
    logits = logits.float() / max(options.temperature, 1e-5)
    if options.top_k > 0:
        kth = torch.topk(logits, min(options.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < options.top_p < 1:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) > options.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
