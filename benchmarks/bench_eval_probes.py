"""bench_eval.py's probes of the old (batched) engine: its attention against eager and float32 on real prompts
(``--check``), and prefill / decode-step cost at several batch sizes on random ids (``--probe``)."""

from __future__ import annotations

import time

PAD_ID = 199999  # <|endoftext|>


def check_attention(model, prompts) -> dict:
    """Our attention against transformers' eager one on real prompts, at layer 0 (before MoE routing, whose
    discrete choices amplify any bf16 rounding): each against a float32 run of the same layer."""
    import copy

    import torch

    from trainer.generation.sink_attention import register_sink_attention

    rows = sorted(prompts, key=lambda p: -len(p["ids"]))[:4]
    width = max(len(p["ids"]) for p in rows)
    device = model.device
    ids = torch.full((len(rows), width), PAD_ID, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for r, p in enumerate(rows):
        ids[r, width - len(p["ids"]):] = torch.tensor(p["ids"], device=device)
        mask[r, width - len(p["ids"]):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    attention = model.model.layers[0].self_attn
    before = model.config._attn_implementation
    captured: dict = {}

    def grab(module, args, kwargs, output):
        captured.setdefault("inputs", (args, kwargs))
        captured[model.config._attn_implementation] = output[0].float()

    hook = attention.register_forward_hook(grab, with_kwargs=True)
    with torch.inference_mode():
        model.set_attn_implementation("eager")
        model.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        model.set_attn_implementation(register_sink_attention())
        model.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        hook.remove()
        model.set_attn_implementation("eager")
        reference = copy.deepcopy(attention).float()
        args, kwargs = captured["inputs"]
        kwargs = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else
                      tuple(t.float() for t in v) if isinstance(v, tuple) else v) for k, v in kwargs.items()
                  if k != "past_key_values"}
        exact = reference(*(a.float() for a in args), **kwargs)[0].float()
        model.set_attn_implementation(before)
    real = mask.bool()
    scale = exact[real].abs().mean().item()
    result = {"layer0_attention_abs_mean": round(scale, 5)}
    for name in ("eager", "haruhi_sinks"):
        err = (captured[name][real] - exact[real]).abs()
        result[f"{name}_vs_fp32_max"] = round(err.max().item(), 5)
        result[f"{name}_vs_fp32_mean"] = round(err.mean().item(), 6)
    return result


def probe(model, rows_list, prompt_len: int, steps: int) -> list[dict]:
    """Decode-step and prefill cost at several batch sizes (random ids), with a profile of one decode step."""
    import torch
    from transformers import DynamicCache

    results = []
    for rows in rows_list:
        ids = torch.randint(0, 199000, (rows, prompt_len), device=model.device)
        mask = torch.ones_like(ids)
        positions = (mask.cumsum(-1) - 1)
        cache = DynamicCache(config=model.config)
        chunk = max(16, 32768 // rows)
        with torch.inference_mode():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for begin in range(0, prompt_len, chunk):
                end = min(prompt_len, begin + chunk)
                out = model(input_ids=ids[:, begin:end], attention_mask=mask[:, :end],
                            position_ids=positions[:, begin:end], past_key_values=cache, use_cache=True,
                            logits_to_keep=1)
            torch.cuda.synchronize()
            prefill = time.perf_counter() - t0
            token = out.logits[:, -1].argmax(-1)
            position = positions[:, -1:]
            times = []
            for step in range(steps):
                mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
                position = position + 1
                torch.cuda.synchronize()
                t1 = time.perf_counter()
                out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position, past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
                token = out.logits[:, -1].argmax(-1)
                token.tolist()
                times.append(time.perf_counter() - t1)
            entry = {"rows": rows, "prompt_len": prompt_len, "experts": model.config._experts_implementation,
                     "prefill_tokens_per_second": round(rows * prompt_len / prefill),
                     "decode_ms_per_step": round(sorted(times[2:])[len(times[2:]) // 2] * 1000, 2)}
            if rows == rows_list[0]:
                from torch.profiler import ProfilerActivity
                from torch.profiler import profile as torch_profile

                mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
                with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position + 1,
                                past_key_values=cache, use_cache=True, logits_to_keep=1)
                    out.logits[:, -1].argmax(-1).tolist()
                entry["profile"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14,
                                                             max_name_column_width=50)
        del cache, out
        torch.cuda.empty_cache()
        results.append(entry)
    return results
