"""``haruhi-convert``: merge a LoRA adapter into its base and write a GGUF that llama.cpp runs."""
