"""The shared core: characters, persona prompts, prompt formats, harmony, retrieval, datasets, events, the
GGUF header and the llama.cpp engine.

The app (:mod:`haruhi_tui.app`), its services, the trainer and the converter all import this package; it
imports none of them (``tests/test_import_graph.py`` checks), so the ideas in it exist once.
"""
