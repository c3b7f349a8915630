"""Reading a checkpoint's `config.json` for conversion: model type check and the vision config."""
from __future__ import annotations

import json
import os
from typing import Optional

from llava_mini_jax.config import BUILTIN_VISION_CONFIGS, ClipVisionConfig, LlavaMiniConfig

SUPPORTED_MODEL_TYPES = ("llava_mini_llama", "llava_llama")


def read_config(directory: str) -> dict:
    """`directory/config.json` as a dict (FileNotFoundError / ValueError naming the file)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return d


def check_model_type(config: dict, path: str) -> None:
    t = config.get("model_type")
    if t not in SUPPORTED_MODEL_TYPES:
        hint = " (a plain LLM: build a LLaVA-Mini from it with convert.init_from_parts)" if t == "llama" else ""
        raise ValueError(f"{path}/config.json: unsupported model_type {t!r}{hint}; expected one of "
                         f"{list(SUPPORTED_MODEL_TYPES)}")


def vision_section(clip_config: dict) -> dict:
    """The vision part of a CLIP `config.json` (a `CLIPModel` config holds it under `vision_config`)."""
    if isinstance(clip_config.get("vision_config"), dict):
        return dict(clip_config["vision_config"])
    return dict(clip_config)


def resolve_vision(config: dict, directory: str, override: Optional[str] = None
                   ) -> tuple[ClipVisionConfig, dict, Optional[str]]:
    """`(vision config, its dict for config.json, local tower directory or None)`.

    Order (as `load_pretrained`, library decision D12): `override` (a CLIP directory), a
    `vision_config` entry, `mm_vision_tower` as a directory relative to `directory` or absolute,
    the built-in config of a known hub id.
    """
    if override is not None:
        if not os.path.isdir(override):
            raise FileNotFoundError(f"vision tower directory {override} does not exist")
        d = vision_section(read_config(override))
        return ClipVisionConfig.from_hf_dict(d), d, override
    if isinstance(config.get("vision_config"), dict):
        d = dict(config["vision_config"])
        return ClipVisionConfig.from_hf_dict(d), d, None
    name = config.get("mm_vision_tower") or config.get("vision_tower")
    if not name:
        raise ValueError(f"{directory}/config.json has no mm_vision_tower and no vision_config")
    for candidate in (os.path.join(directory, name), name):
        if os.path.isdir(candidate):
            d = vision_section(read_config(candidate))
            return ClipVisionConfig.from_hf_dict(d), d, candidate
    if name in BUILTIN_VISION_CONFIGS:
        v = BUILTIN_VISION_CONFIGS[name]
        return v, v.to_hf_dict(), None
    raise FileNotFoundError(f"mm_vision_tower={name!r} is neither a directory (relative to {directory} or absolute) "
                            f"nor a built-in hub id ({sorted(BUILTIN_VISION_CONFIGS)}); pass --vision-tower DIR")


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
