"""Checkpoint conversion, streaming (one tensor at a time):

- `python -m convert.hf_to_jax`: HF PyTorch LLaVA-Mini / LLaVA-v1.5 -> our JAX directory
- `python -m convert.jax_to_hf`: our JAX directory (or a training step) -> HF safetensors
- `python -m convert.init_from_parts`: an untrained model from HF Llama + CLIP checkpoints

The JAX directory format is described in `llava_mini_jax.jax_checkpoint`.
"""
