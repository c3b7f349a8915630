"""The model to train and its initial params, placed straight into their shardings.

`model.path` (`load_pretrained`: HF or converted JAX directory, or a training step directory),
`model.llm_path` + `model.vision_path` (issue 3's `init_from_parts`), or `model.config_json`
(random init, jitted with sharded outputs so no device holds the whole model). Then
`model.init_from_checkpoint` overlays params read from a training checkpoint (stage 2 takes the
stage-1 projector this way).
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from llava_mini_jax.config import LlavaMiniConfig
from llava_mini_jax.loading import dummy_inputs, load_config, place_with_shardings
from llava_mini_jax.model import LlavaMini

from .config import ConfigError, ModelConfig

log = logging.getLogger(__name__)


def _overrides(cfg: ModelConfig) -> dict:
    out = dict(cfg.overrides)
    out.update(scan_layers=cfg.scan_layers, remat_policy=cfg.remat_policy)
    if cfg.mode is not None:
        out["mode"] = cfg.mode
    if cfg.max_length is not None:
        out["max_length"] = cfg.max_length
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


def _parts_module():
    try:
        from convert import init_from_parts  # issue 3
    except ImportError as e:
        raise NotImplementedError("model.llm_path/vision_path need convert.init_from_parts (issue 3), which this "
                                  "installation lacks") from e
    return init_from_parts


def _parts_config(cfg: ModelConfig) -> LlavaMiniConfig:
    return _parts_module().parts_config(cfg.llm_path, cfg.vision_path, **_overrides(cfg))


def build_model(mc: LlavaMiniConfig, cfg: ModelConfig) -> LlavaMini:
    return LlavaMini(mc, dtype=jnp.dtype(cfg.compute_dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def random_params(model: LlavaMini, seed: int, shardings) -> dict:
    """Module-initialiser params, created by one jitted init whose outputs are sharded."""
    def init(rng):
        return nn.unbox(model.init(rng, **dummy_inputs(model.config))["params"])
    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def initial_params(cfg: ModelConfig, model: LlavaMini, shardings, random_init=None) -> dict:
    """Params of the configured source in `shardings` (then the checkpoint overlay, if any).
    `random_init(seed)` replaces `random_params` (a cached jitted init)."""
    dtype = jnp.dtype(cfg.param_dtype)
    if cfg.source == "path":
        from llava_mini_jax.loading import load_pretrained
        _, params = load_pretrained(cfg.path, dtype=dtype, compute_dtype=jnp.dtype(cfg.compute_dtype),
                                    shardings=shardings, **_overrides(cfg))
    elif cfg.source == "parts":
        params = _parts_module().parts_params(cfg.llm_path, cfg.vision_path, model.config, shardings=shardings,
                                              dtype=dtype, seed=cfg.init_seed)
    elif random_init is not None:
        params = random_init(cfg.init_seed)
    else:
        params = random_params(model, cfg.init_seed, shardings)
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
