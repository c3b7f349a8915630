"""Reading a checkpoint's `config.json` for conversion: model type check and the vision config."""
from __future__ import annotations

import os
from typing import Optional

from llava_mini_jax.config import ClipVisionConfig, LlavaMiniConfig
from llava_mini_jax.loading import find_vision_tower, read_json

SUPPORTED_MODEL_TYPES = ("llava_mini_llama", "llava_llama")


def read_config(directory: str) -> dict:
    """`directory/config.json` as a dict (FileNotFoundError / ValueError naming the file)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    return read_json(os.path.join(directory, "config.json"))


def check_model_type(config: dict, path: str) -> None:
    t = config.get("model_type")
    if t not in SUPPORTED_MODEL_TYPES:
        hint = " (a plain LLM: build a LLaVA-Mini from it with convert.init_from_parts)" if t == "llama" else ""
        raise ValueError(f"{path}/config.json: unsupported model_type {t!r}{hint}; expected one of "
                         f"{list(SUPPORTED_MODEL_TYPES)}")


def resolve_vision(config: dict, directory: str, override: Optional[str] = None
                   ) -> tuple[ClipVisionConfig, dict, Optional[str]]:
    """`(vision config, its dict for config.json, local tower directory or None)`, resolved as
    `load_pretrained` does (`loading.find_vision_tower`); `override` is a CLIP directory."""
    try:
        d, tower = find_vision_tower(config, directory, override)
    except FileNotFoundError as e:
        if override is None and "mm_vision_tower=" in str(e):
            raise FileNotFoundError(f"{e}; pass --vision-tower DIR") from None
        raise
    return ClipVisionConfig.from_hf_dict(d), d, tower


def model_config(config: dict, vision: ClipVisionConfig, **overrides) -> LlavaMiniConfig:
    return LlavaMiniConfig.from_hf_dict(config, vision, **overrides)


def legacy_llm_config(config: dict) -> dict:
    """An HF Llama `config.json` in the transformers-4.x form the reference reads: transformers 5
    writes `rope_parameters` (holding `rope_theta`) and `dtype`; 4.x reads `rope_theta`,
    `rope_scaling` (None for plain RoPE) and `torch_dtype`."""
    d = dict(config)
    if isinstance(d.get("rope_parameters"), dict):
        rope = dict(d.pop("rope_parameters"))
        d["rope_theta"] = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        d["rope_scaling"] = None if rope.get("rope_type", rope.get("type", "default")) == "default" else rope
    d.setdefault("rope_scaling", None)
    if "dtype" in d:
        dt = d.pop("dtype")
        d.setdefault("torch_dtype", dt)
    return d
