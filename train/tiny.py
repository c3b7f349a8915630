"""Tiny runs for smoke tests, the `--tiny` benchmarks and the tests: the library's tiny model
(`llava_mini_jax.tiny`: CLIP 16 px / patch 4, width 32, 2 layers; Llama width 32, 2 layers, 4 heads
(2 KV heads), vocab 64; C = 1; 2 pre-fusion layers) and a float32 synthetic-data run config.
One CPU train step is milliseconds, its compile seconds.
"""
from __future__ import annotations

from llava_mini_jax.config import LlavaMiniConfig
from llava_mini_jax.tiny import tiny_config, write_config

from .config import TrainConfig, from_dict, to_dict


def tiny_model_config(mode: str = "mini", hidden: int = 32, layers: int = 2, vocab: int = 64) -> LlavaMiniConfig:
    """The library's tiny config with a training run's knobs (width, depth, vocabulary)."""
    return tiny_config(mode, vocab_size=vocab, hidden_size=hidden, num_layers=layers, compressor_heads=4,
                       vision_tower="tiny-clip")


def write_tiny_model(directory: str, mode: str = "mini", **kw) -> str:
    """Writes the tiny model's `config.json` into `directory` (`model.config_json`); returns its path."""
    return write_config(directory, tiny_model_config(mode, **kw))


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
