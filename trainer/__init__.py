"""Training (LoRA fine-tuning, Unsloth on CUDA, transformers + PEFT + TRL elsewhere) and evaluation."""
