"""A tiny random LLaVA-Mini checkpoint in the HF layout, with a real (fixture) tokenizer, for CLI tests."""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
from safetensors.numpy import save_file

from llava_mini_jax import ClipVisionConfig, LlamaConfig, LlavaMini, LlavaMiniConfig
from llava_mini_jax.hf_weights import params_to_hf
from llava_mini_jax.loading import init_params

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def tiny_config(vocab_size: int, mode: str = "mini", **kw) -> LlavaMiniConfig:
    vision = ClipVisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, patch_size=4,
                              image_size=16)
    llm = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position_embeddings=4096, pad_token_id=0)
    return LlavaMiniConfig(llm=llm, vision=vision, mode=mode, compressor_size=1, prefusion_layers=1,
                           vision_tower="clip", eos_token_ids=(2,), pad_token_id=0, **kw)


def write_checkpoint(directory: pathlib.Path, cfg: LlavaMiniConfig, params, tokenizer: str = "vicuna") -> pathlib.Path:
    """HF LLaVA-Mini directory: config.json, model.safetensors, clip/ (tower), tokenizer files."""
    directory.mkdir(parents=True, exist_ok=True)
    hf = cfg.to_hf_dict()
    hf.pop("vision_config")
    hf["mm_vision_tower"] = "clip"
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    tensors = {k: np.ascontiguousarray(v) for k, v in params_to_hf(jax.tree.map(np.asarray, params), cfg)}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "clip").mkdir(exist_ok=True)
    (directory / "clip" / "config.json").write_text(json.dumps(cfg.vision.to_hf_dict()))
    clip = {k[len("model.vision_tower.vision_tower."):]: v for k, v in tensors.items()
            if k.startswith("model.vision_tower.")}
    save_file(clip, str(directory / "clip" / "model.safetensors"))
    shutil.copy(FIXTURES / "std" / "hf" / "clip" / "preprocessor_config.json", directory / "clip")
    for f in (FIXTURES / "preprocess" / "tokenizers" / tokenizer).iterdir():
        shutil.copy(f, directory / f.name)
    return directory


def make_tiny_checkpoint(directory: pathlib.Path, seed: int = 0, mode: str = "mini") -> pathlib.Path:
    cfg = tiny_config(2000, mode=mode)
    params = init_params(LlavaMini(cfg), jax.random.key(seed))
    return write_checkpoint(directory, cfg, params)
