"""Tiny model and run configs for smoke runs, the `--tiny` benchmarks and the tests.

The model: CLIP 16 px / patch 4 (16 patches), width 32, 2 layers; Llama width 32, 2 layers, 4
heads (2 KV heads), vocab 64; compressor 1 token; 2 pre-fusion layers. A few thousand params:
one CPU train step is milliseconds, its compile seconds.
"""
from __future__ import annotations

import json
import os

from llava_mini_jax.config import ClipVisionConfig, LlamaConfig, LlavaMiniConfig

from .config import TrainConfig, from_dict, to_dict


def tiny_model_config(mode: str = "mini", hidden: int = 32, layers: int = 2, vocab: int = 64) -> LlavaMiniConfig:
    return LlavaMiniConfig(
        llm=LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers,
                        num_heads=4, num_kv_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6),
        vision=ClipVisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, patch_size=4,
                                image_size=16),
        mode=mode, projector_type="mlp2x_gelu", vision_select_layer=-1, compressor_size=1, compressor_heads=4,
        prefusion_layers=2, vision_tower="tiny-clip")


def write_tiny_model(directory: str, mode: str = "mini", **kw) -> str:
    """Writes the tiny model's `config.json` into `directory`; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "config.json")
    with open(path, "w") as f:
        json.dump(tiny_model_config(mode, **kw).to_hf_dict(), f, indent=2)
    return path


def tiny_train_config(config_json: str, **sections) -> TrainConfig:
    """A float32, synthetic-data run of the tiny model; `sections` override `{section: {key: value}}`."""
    d = to_dict(TrainConfig())
    d["model"].update(config_json=config_json, compute_dtype="float32", remat_policy="none")
    d["data"].update(source="synthetic", synthetic_size=64, read_threads=1, prefetch=2)
    d["mesh"].update(data=1, fsdp=1, tensor=1, devices=1)
    d["optimizer"].update(groups=[{"name": "projector", "match": ["mm_projector"], "lr": 1e-3},
                                  {"name": "default", "match": [".*"], "lr": 1e-3}],
                          freeze=[], max_grad_norm=1.0)
    d["schedule"].update(warmup_steps=1)
    d["train"].update(global_batch_size=8, max_steps=3, transfer_guard=True)
    d["logging"].update(progress_bar=False)
    d["distributed"].update(initialize="never")
    for section, values in sections.items():
        if isinstance(values, dict):
            d[section].update(values)
        else:
            d[section] = values
    return from_dict(TrainConfig, d)
