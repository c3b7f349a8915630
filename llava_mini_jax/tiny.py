"""Tiny models in seconds: the one builder the tests, the demo, the benchmarks and the notebooks
share.

    tiny_config(mode)                      LlavaMiniConfig: CLIP 16 px / patch 4 (16 patches), width
                                           32, 2 layers; Llama width 32, 2 layers, 4 heads (2 KV),
                                           vocab 64; C = 1 (8 heads); 2 pre-fusion layers. Every size
                                           is a knob.
    write_config(directory, cfg, gen)      `config.json` only (training from `model.config_json`)
    write_hf_checkpoint(directory, cfg, params, gen, tokenizer_dir=...)
                                           an HF-layout checkpoint (`config.json`, `model.safetensors`,
                                           the tower under `clip/`, tokenizer and processor files)
                                           that `load_pretrained`, `ChatSession` and the CLI read
    random_checkpoint(directory, cfg, ...) the same with module-initialiser weights

A few thousand parameters: one CPU forward is milliseconds, its compile seconds.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import jax
import numpy as np
from safetensors.numpy import save_file

from .config import ClipVisionConfig, GenerationConfig, LlamaConfig, LlavaMiniConfig
from .hf_weights import params_to_hf
from .loading import init_params
from .model import LlavaMini

TOWER_DIR = "clip"  # the tower's directory inside a tiny checkpoint (`mm_vision_tower`)
_TOWER_PREFIX = "model.vision_tower.vision_tower."


def tiny_config(mode: str = "mini", *, vocab_size: int = 64, hidden_size: int = 32, num_layers: int = 2,
                num_heads: int = 4, num_kv_heads: int = 2, max_position_embeddings: int = 256,
                rms_norm_eps: float = 1e-6, pad_token_id: Optional[int] = None, vision_hidden_size: int = 32,
                vision_layers: int = 2, image_size: int = 16, patch_size: int = 4, **fields) -> LlavaMiniConfig:
    """A tiny LLaVA-Mini (`mode="mini"`) or LLaVA-v1.5 (`"baseline"`) config. The LLM and CLIP
    take their MLP width as twice their width; `fields` set other `LlavaMiniConfig` fields
    (defaults here: `projector_type="mlp2x_gelu"`, `vision_select_layer=-1`, `compressor_size=1`,
    `prefusion_layers=2`, `vision_tower="clip"`; `compressor_heads` stays 8, the only value a
    `config.json` carries)."""
    llm = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
                      max_position_embeddings=max_position_embeddings, rms_norm_eps=rms_norm_eps,
                      pad_token_id=pad_token_id)
    vision = ClipVisionConfig(hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
                              num_layers=vision_layers, num_heads=4, patch_size=patch_size, image_size=image_size)
    kw = dict(projector_type="mlp2x_gelu", vision_select_layer=-1, compressor_size=1, prefusion_layers=2,
              vision_tower=TOWER_DIR)
    kw.update(fields)
    return LlavaMiniConfig(llm=llm, vision=vision, mode=mode, **kw)


def hf_config(cfg: LlavaMiniConfig, generation: GenerationConfig = GenerationConfig()) -> dict:
    """The `config.json` dict: the model's, plus the generation settings."""
    return generation.add_to(cfg.to_hf_dict())


def write_config(directory: str | os.PathLike, cfg: LlavaMiniConfig,
                 generation: GenerationConfig = GenerationConfig(), name: str = "config.json") -> str:
    """Writes `directory/name` (the `config.json` dict, with the resolved `vision_config`);
    returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(hf_config(cfg, generation), f, indent=2)
    return path


def write_hf_checkpoint(directory: str | os.PathLike, cfg: LlavaMiniConfig, params,
                        generation: GenerationConfig = GenerationConfig(), tokenizer_dir: Optional[str] = None,
                        processor_config: Optional[str] = None) -> str:
    """An HF-layout directory for `params` (small models: one `model.safetensors`): `config.json`
    naming the tower directory `clip/` (its own `config.json` and weights, as the released
    checkpoints ship CLIP), the files of `tokenizer_dir` and, in `clip/`, `processor_config` (a
    `preprocessor_config.json`). Returns the directory."""
    directory = os.fspath(directory)
    tower = os.path.join(directory, TOWER_DIR)
    os.makedirs(tower, exist_ok=True)
    hf = hf_config(cfg, generation)
    vision = hf.pop("vision_config")
    hf["mm_vision_tower"] = TOWER_DIR
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    tensors = {k: np.ascontiguousarray(v) for k, v in params_to_hf(jax.tree.map(np.asarray, params), cfg)}
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    save_file({k[len(_TOWER_PREFIX):]: v for k, v in tensors.items() if k.startswith(_TOWER_PREFIX)},
              os.path.join(tower, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tower, "config.json"), "w") as f:
        json.dump(vision, f, indent=2)
    if processor_config is not None:
        shutil.copy(processor_config, os.path.join(tower, "preprocessor_config.json"))
    if tokenizer_dir is not None:
        for name in os.listdir(tokenizer_dir):
            shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(directory, name))
    return directory


def random_checkpoint(directory: str | os.PathLike, cfg: LlavaMiniConfig, seed: int = 0,
                      generation: GenerationConfig = GenerationConfig(), **files) -> str:
    """`write_hf_checkpoint` of module-initialiser weights (`init_params`, key `seed`); `files`:
    `tokenizer_dir`, `processor_config`."""
    params = init_params(LlavaMini(cfg), jax.random.key(seed))
    return write_hf_checkpoint(directory, cfg, params, generation, **files)
