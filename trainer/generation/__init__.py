"""Batched generation for evaluation: transformers (HF checkpoints, + LoRA adapter) and llama.cpp (GGUF).

Both engines take token ids built by :mod:`haruhi_tui.core.prompt_format` and stream
:class:`~trainer.generation.decoding.Completion`\\ s back as sequences finish, so the evaluator can append
each prediction to disk at once. One module per concern:

* :mod:`.decoding`: what is asked (:class:`Request`, :class:`DecodingOptions`) and what comes back.
* :mod:`.stops`: where each sequence's reply ends (:class:`StopRule`).
* :mod:`.sink_attention`: exact attention-with-sinks for gpt-oss on transformers (the batched engine).
* :mod:`.hf`: :class:`HFGenerator`, generation on transformers (loading, prompts, the batched engine).
* :mod:`.continuous`: the continuous engine on transformers: shared prompt prefixes, packed prompt chunks.
* :mod:`.prefix_share`: which computed prefix a request starts from.
* :mod:`.slot_attention`: the KV cache of fixed slots and the attention over it (reference, FlashAttention).
* :mod:`.decode_graphs`: CUDA graphs of decode steps.
* :mod:`.sampling`: the next token from logits.
* :mod:`.gguf`: :class:`GGUFGenerator`, continuous batching on llama.cpp.
* :mod:`.loader`: :func:`load_generator`, the engine for a model path.
"""
