"""The model to train and its initial params, placed straight into their shardings.

`model.path` (`load_pretrained`: HF or converted JAX directory, or a training step directory),
`model.llm_path` + `model.vision_path` (issue 3's `init_from_parts`), or `model.config_json`
(random init, jitted with sharded outputs so no device holds the whole model). Then
`model.init_from_checkpoint` overlays params read from a training checkpoint (stage 2 takes the
stage-1 projector this way).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from llava_mini_jax.config import GenerationConfig, LlavaMiniConfig
from llava_mini_jax.loading import load_config, load_generation_config, param_init_fn
from llava_mini_jax.model import LlavaMini
from llava_mini_jax.sharding import place_with_shardings

from .config import ConfigError, DataConfig, ModelConfig

log = logging.getLogger(__name__)


def _overrides(cfg: ModelConfig) -> dict:
    out = dict(cfg.overrides)
    if cfg.mode is not None:
        out["mode"] = cfg.mode
    return out


def model_config(cfg: ModelConfig) -> tuple[LlavaMiniConfig, Optional[str]]:
    """`(LlavaMiniConfig, directory holding the tokenizer or None)` of the configured source."""
    if cfg.source == "path":
        mc, _ = load_config(cfg.path, **_overrides(cfg))
        return mc, cfg.path
    if cfg.source == "parts":
        return _parts_config(cfg), cfg.llm_path
    if cfg.source == "config_json":
        with open(cfg.config_json) as f:
            d = json.load(f)
        return LlavaMiniConfig.from_hf_dict(d, **_overrides(cfg)), None
    raise ConfigError("model: no weight source; set model.path, model.llm_path + model.vision_path, or "
                      "model.config_json")


def with_data_settings(mc: LlavaMiniConfig, data: DataConfig) -> LlavaMiniConfig:
    """The model config a run trains (and writes into its checkpoints): `max_length` and
    `image_aspect_ratio` are the data section's (`model_max_length`), their one owner."""
    return dataclasses.replace(mc, max_length=data.model_max_length, image_aspect_ratio=data.image_aspect_ratio)


def generation_config(cfg: ModelConfig) -> GenerationConfig:
    """The source's EOS / pad ids (written into the run's `config.json`, so exports keep them)."""
    if cfg.source == "path":
        return load_generation_config(cfg.path)
    if cfg.source == "parts":
        return load_generation_config(cfg.llm_path)
    if cfg.source == "config_json":
        with open(cfg.config_json) as f:
            return GenerationConfig.from_hf_dict(json.load(f))
    return GenerationConfig()


# -- issue 3's init_from_parts: an untrained LLaVA-Mini / LLaVA-v1.5 from an LLM and a CLIP -------
_PARTS_KEYS = ("compressor_size", "prefusion_layers", "projector_type", "vision_select_layer", "resolution_ratio")


def _parts_options(cfg: ModelConfig) -> dict:
    o = cfg.overrides
    opts = dict(baseline=cfg.mode == "baseline", compressor_size=o.get("compressor_size", 1),
                prefusion_layers=o.get("prefusion_layers", 4), projector_type=o.get("projector_type", "mlp2x_gelu"),
                vision_select_layer=o.get("vision_select_layer", -2), resolution_ratio=o.get("resolution_ratio", 1),
                model_max_length=None)
    return opts


def _parts_config(cfg: ModelConfig) -> LlavaMiniConfig:
    """The combined model's config, from the two `config.json`s (nothing written)."""
    from convert.checkpoint_config import legacy_llm_config, read_config
    from llava_mini_jax.loading import vision_section
    from convert.init_from_parts import llava_config
    from llava_mini_jax.config import ClipVisionConfig
    vision = vision_section(read_config(cfg.vision_path))
    vcfg = ClipVisionConfig.from_hf_dict(vision)
    d = llava_config(legacy_llm_config(read_config(cfg.llm_path)), vcfg, vision_tower_name=os.path.abspath(
        cfg.vision_path), **_parts_options(cfg))
    return LlavaMiniConfig.from_hf_dict(d, vcfg, **_overrides(cfg))


def parts_dir(cfg: ModelConfig, run_dir: Optional[str]) -> str:
    """Where `init_from_parts` writes the combined model: `model.parts_dir`, else `RUN/init_from_parts`,
    else a temporary directory."""
    if cfg.parts_dir:
        return cfg.parts_dir
    if run_dir:
        return os.path.join(run_dir, "init_from_parts")
    import tempfile
    return os.path.join(tempfile.mkdtemp(prefix="llava_mini_parts_"), "model")


def _parts_params(cfg: ModelConfig, shardings, run_dir: Optional[str]) -> dict:
    """Writes the combined model once (process 0; the run directory is shared, as orbax needs), then
    every process loads its shards of it."""
    from llava_mini_jax.loading import load_pretrained
    out = parts_dir(cfg, run_dir)
    if jax.process_index() == 0 and not os.path.isdir(out):
        from convert.init_from_parts import init_from_parts
        log.info("init_from_parts: %s + %s -> %s", cfg.llm_path, cfg.vision_path, out)
        init_from_parts(cfg.llm_path, cfg.vision_path, out, seed=cfg.init_seed, fmt="jax", **_parts_options(cfg))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("init_from_parts")
    _, params = load_pretrained(out, dtype=jnp.dtype(cfg.param_dtype), compute_dtype=jnp.dtype(cfg.compute_dtype),
                                shardings=shardings, **runtime(cfg), **_overrides(cfg))
    return params


def runtime(cfg: ModelConfig) -> dict:
    """The `LlavaMini` runtime fields (and `load_pretrained` keywords) of the run."""
    return dict(scan_layers=cfg.scan_layers, remat_policy=cfg.remat_policy)


def build_model(mc: LlavaMiniConfig, cfg: ModelConfig) -> LlavaMini:
    return LlavaMini(mc, dtype=jnp.dtype(cfg.compute_dtype), param_dtype=jnp.dtype(cfg.param_dtype), **runtime(cfg))


def initial_params(cfg: ModelConfig, model: LlavaMini, shardings, random_init=None,
                   run_dir: Optional[str] = None) -> dict:
    """Params of the configured source in `shardings` (then the checkpoint overlay, if any).
    `random_init(seed)` replaces a fresh jitted init (e.g. the trainer's cached one); `run_dir` hosts the
    `init_from_parts` output."""
    dtype = jnp.dtype(cfg.param_dtype)
    if cfg.source == "path":
        from llava_mini_jax.loading import load_pretrained
        _, params = load_pretrained(cfg.path, dtype=dtype, compute_dtype=jnp.dtype(cfg.compute_dtype),
                                    shardings=shardings, **runtime(cfg), **_overrides(cfg))
    elif cfg.source == "parts":
        params = _parts_params(cfg, shardings, run_dir)
    elif random_init is not None:
        params = random_init(cfg.init_seed)
    else:
        params = param_init_fn(model, shardings)(jax.random.key(cfg.init_seed))
    if cfg.init_from_checkpoint:
        params = overlay_from_checkpoint(params, cfg.init_from_checkpoint, cfg.init_patterns, shardings)
    return params


def resolve_step_dir(path: str) -> str:
    """A training step directory (holding `params/`): `path` itself, or the latest step under a run
    directory."""
    if os.path.isdir(os.path.join(path, "params")):
        return path
    steps = sorted((int(n) for n in os.listdir(path) if n.isdigit() and
                    os.path.isdir(os.path.join(path, n, "params"))), reverse=True) if os.path.isdir(path) else []
    if not steps:
        raise FileNotFoundError(f"{path} is neither a checkpoint step directory (with params/) nor a run directory "
                                "holding one")
    return os.path.join(path, str(steps[0]))


def overlay_from_checkpoint(params: dict, path: str, patterns, shardings) -> dict:
    """Replaces the params matching `patterns` (regexes on `a/b/c`; empty: all) by the values a
    training checkpoint stores for them (only those leaves are read, each straight into its
    sharding). Missing or mis-shaped leaves raise ValueError naming them."""
    from llava_mini_jax.jax_checkpoint import ParamsReader
    step_dir = resolve_step_dir(path)
    reader = ParamsReader(os.path.join(step_dir, "params"))
    stored = set(reader.paths)
    flat = traverse_util.flatten_dict(params)
    flat_sh = traverse_util.flatten_dict(shardings)
    regexes = [re.compile(p) for p in patterns]
    wanted = [p for p in flat if not regexes or any(r.search("/".join(p)) for r in regexes)]
    if regexes:
        missing = [("/".join(p)) for p in wanted if p not in stored]
        if missing:
            raise ValueError(f"model.init_from_checkpoint={step_dir}: params {missing[:10]} match "
                             f"model.init_patterns={list(patterns)} but the checkpoint lacks them")
    wanted = [p for p in wanted if p in stored]
    if not wanted:
        raise ValueError(f"model.init_from_checkpoint={step_dir}: no param of the model matches "
                         f"{list(patterns) or 'any'} in the checkpoint")
    for p in wanted:
        shape, _ = reader.shape_dtype(p)
        if shape != tuple(flat[p].shape):
            raise ValueError(f"model.init_from_checkpoint: param {'/'.join(p)} is {shape} in {step_dir}, the model "
                             f"has {tuple(flat[p].shape)}")
        a = reader.read(p).astype(flat[p].dtype)
        flat[p] = place_with_shardings({"x": a}, {"x": flat_sh[p]}, flat[p].dtype)["x"]
    log.info("took %d params from %s (%s)", len(wanted), step_dir, list(patterns) or "all")
    return traverse_util.unflatten_dict(flat)


def count_params(abstract) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract)))
