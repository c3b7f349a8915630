"""`load_pretrained`: an HF LLaVA-Mini / LLaVA-v1.5 directory (or our converted one) -> (model, params)."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from .config import BUILTIN_VISION_CONFIGS, ClipVisionConfig, LlavaMiniConfig
from .hf_weights import CLIP_PREFIX, hf_to_params, placements
from .model import LlavaMini
from .safetensors_io import CheckpointReader

log = logging.getLogger(__name__)

# Buffers some exporters write that carry no weights.
_IGNORED_SUFFIXES = ("position_ids", "rotary_emb.inv_freq")


def read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    with open(path) as f:
        return json.load(f)


def resolve_vision_tower(hf_config: dict, checkpoint_dir: str) -> tuple[ClipVisionConfig, Optional[str]]:
    """The CLIP config and, when local, the tower's directory (library decision D12).

    Order: a `vision_config` entry (our converted checkpoints); `mm_vision_tower` as a directory
    relative to the checkpoint directory, or absolute; the built-in config of a known hub id.
    """
    if isinstance(hf_config.get("vision_config"), dict):
        return ClipVisionConfig.from_hf_dict(hf_config["vision_config"]), None
    name = hf_config.get("mm_vision_tower") or hf_config.get("vision_tower")
    if not name:
        raise ValueError(f"{checkpoint_dir}/config.json has no mm_vision_tower and no vision_config")
    for candidate in (os.path.join(checkpoint_dir, name), name):
        if os.path.isdir(candidate):
            return ClipVisionConfig.from_hf_dict(read_json(os.path.join(candidate, "config.json"))), candidate
    if name in BUILTIN_VISION_CONFIGS:
        return BUILTIN_VISION_CONFIGS[name], None
    raise FileNotFoundError(f"mm_vision_tower={name!r} is neither a directory (relative to {checkpoint_dir} or "
                            f"absolute) nor a built-in hub id ({sorted(BUILTIN_VISION_CONFIGS)})")


def load_config(path: str, **overrides) -> tuple[LlavaMiniConfig, dict]:
    """`(LlavaMiniConfig, raw config.json dict)` of a checkpoint directory."""
    hf = read_json(os.path.join(path, "config.json"))
    vision, _ = resolve_vision_tower(hf, path)
    return LlavaMiniConfig.from_hf_dict(hf, vision, **overrides), hf


def generation_defaults(path: str) -> dict:
    """`eos_token_ids` / `pad_token_id` from `generation_config.json` when present (it wins over
    config.json, as in HF `generate`)."""
    gpath = os.path.join(path, "generation_config.json")
    if not os.path.exists(gpath):
        return {}
    g = read_json(gpath)
    out = {}
    eos = g.get("eos_token_id")
    if eos is not None:
        out["eos_token_ids"] = tuple(eos if isinstance(eos, (list, tuple)) else [eos])
    if g.get("pad_token_id") is not None:
        out["pad_token_id"] = g["pad_token_id"]
    return out


def dummy_inputs(cfg: LlavaMiniConfig) -> dict:
    """Smallest inputs that touch every parameter (for `init` / `eval_shape`)."""
    v = cfg.vision
    return dict(input_ids=jnp.array([[1, -200]], jnp.int32), attention_mask=jnp.ones((1, 2), jnp.int32),
                images=jnp.zeros((1, 1, v.num_channels, v.image_size, v.image_size), jnp.float32))


def abstract_params(model: LlavaMini) -> Any:
    """The boxed (logically partitioned) params tree of `ShapeDtypeStruct`s, without allocating."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(model.config)))["params"]


def init_params(model: LlavaMini, rng) -> dict:
    """Fresh params (plain arrays) with the module initialisers."""
    return nn.unbox(model.init(rng, **dummy_inputs(model.config))["params"])


def _shape_tree(boxed) -> dict:
    return jax.tree.map(lambda x: tuple(x.shape), nn.unbox(boxed))


def _vision_fallback(tower_dir: Optional[str]):
    """Reads CLIP tensors from the tower directory when the checkpoint lacks them."""
    if tower_dir is None:
        return None
    reader = CheckpointReader(tower_dir)
    names = set(reader.names())

    def read(hf_name: str):
        local = hf_name[len("model.vision_tower.vision_tower."):]  # vision_model.* (transformers 4)
        for candidate in (local, local[len("vision_model."):]):  # transformers 5 drops the prefix
            if candidate in names:
                return reader.read(candidate)
        return None
    return read


def read_hf_params(path: str, cfg: LlavaMiniConfig, shapes: dict, dtype, tower_dir: Optional[str] = None) -> dict:
    """Params (numpy, `dtype`) from the safetensors of an HF directory; errors list every bad key."""
    reader = CheckpointReader(path)
    have = set(reader.names())
    expected = [pl.hf_name for pl in placements(cfg)]
    missing = [n for n in expected if n not in have]
    fallback = _vision_fallback(tower_dir)
    if fallback is not None and missing and all(n.startswith(CLIP_PREFIX) for n in missing):
        log.info("checkpoint has no vision tower weights; reading them from %s", tower_dir)
    elif missing:
        raise ValueError(f"{path}: {len(missing)} tensors missing from the checkpoint: {missing[:20]}"
                         + (" ..." if len(missing) > 20 else ""))
    unexpected = sorted(n for n in have - set(expected) if not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"{path}: {len(unexpected)} unexpected tensors (unknown to a {cfg.mode} model with this "
                         f"config): {unexpected[:20]}" + (" ..." if len(unexpected) > 20 else ""))
    missing = set(missing)

    def read(name):
        if name in missing:
            a = fallback(name)
            if a is None:
                raise ValueError(f"{name} is neither in {path} nor in the vision tower at {tower_dir}")
            return a
        return reader.read(name)
    try:
        return hf_to_params(read, cfg, shapes, dtype=dtype)
    finally:
        reader.close()


def _place(params: dict, boxed, dtype, mesh) -> dict:
    """numpy params -> device arrays of `dtype`, sharded by the logical rules when `mesh` is given."""
    if mesh is None:
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    from .sharding import check_divisible, logical_shardings
    check_divisible(boxed, mesh)
    shardings = logical_shardings(boxed, mesh)
    return place_with_shardings(params, shardings, dtype)


def place_with_shardings(params: dict, shardings, dtype) -> dict:
    """Each leaf straight into its sharding (each device receives only its slice)."""
    def put(a, s):
        a = np.asarray(a).astype(dtype)
        return jax.make_array_from_callback(a.shape, s, lambda idx: a[idx])
    return jax.tree.map(put, params, shardings)


def load_pretrained(path: str | os.PathLike, dtype=jnp.float32, compute_dtype=None, *, mesh=None,
                    shardings=None, **config_overrides) -> tuple[LlavaMini, dict]:
    """Loads a checkpoint directory. Returns `(model, params)` for `model.apply({"params": params}, ...)`.

    - `path`: an HF LLaVA-Mini (`llava_mini_llama`) or LLaVA-v1.5 (`llava_llama`) directory
      (`config.json` + `model.safetensors` or sharded with `model.safetensors.index.json`), or a
      directory written by `python -m convert.hf_to_jax` (orbax params + `config.json`).
    - `dtype`: parameter dtype; `compute_dtype`: activation dtype (default: `dtype`). Logits,
      norms, softmax statistics and the loss are float32 regardless.
    - `mesh`: a `jax.sharding.Mesh` with axes (`data`, `fsdp`, `tensor`): params are placed sharded
      by `sharding.LOGICAL_AXIS_RULES`, each device receiving only its slice. Or `shardings`: a
      params-shaped tree of `jax.sharding.Sharding`s to use as is.
    - `config_overrides`: fields of `LlavaMiniConfig` (e.g. `scan_layers=False`, `remat_policy="full"`,
      `video_chunk_size=64`).

    Vision config: `vision_config` in config.json, else `mm_vision_tower` as a directory (relative
    to `path` first, library decision D12), else the built-in config of its hub id. Vision weights
    come from the checkpoint itself (`model.vision_tower.vision_tower.*`); when absent, from the
    tower directory. Missing, unexpected or mis-shaped tensors raise ValueError listing them.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    hf = read_json(os.path.join(path, "config.json"))
    vision, tower_dir = resolve_vision_tower(hf, path)
    cfg = LlavaMiniConfig.from_hf_dict(hf, vision, **{**generation_defaults(path), **config_overrides})
    model = LlavaMini(cfg, dtype=compute_dtype or dtype, param_dtype=dtype)
    boxed = abstract_params(model)
    from . import jax_checkpoint  # local import: orbax is heavy
    if jax_checkpoint.is_jax_checkpoint(path):
        params = jax_checkpoint.restore_params(path, cfg, boxed, dtype, mesh=mesh, shardings=shardings)
        return model, params
    params = read_hf_params(path, cfg, _shape_tree(boxed), np.dtype(jnp.dtype(dtype)), tower_dir)
    if shardings is not None:
        return model, place_with_shardings(params, shardings, dtype)
    return model, _place(params, boxed, dtype, mesh)
