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
from flax import traverse_util

from . import jax_checkpoint
from . import quantize as quantization
from .config import BUILTIN_VISION_CONFIGS, ClipVisionConfig, GenerationConfig, LlavaMiniConfig
from .hf_weights import CLIP_PREFIX, hf_to_params, placements
from .model import LlavaMini
from .safetensors_io import CheckpointReader
from .sharding import check_divisible, logical_shardings, place_with_shardings

log = logging.getLogger(__name__)

# Buffers some exporters write that carry no weights.
_IGNORED_SUFFIXES = ("position_ids", "rotary_emb.inv_freq")


def read_json(path: str) -> dict:
    """A JSON object file as a dict (FileNotFoundError / ValueError naming the file)."""
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


def vision_section(clip_config: dict) -> dict:
    """The vision part of a CLIP `config.json` (a `CLIPModel` config holds it under `vision_config`)."""
    if isinstance(clip_config.get("vision_config"), dict):
        return dict(clip_config["vision_config"])
    return dict(clip_config)


def find_vision_tower(hf_config: dict, checkpoint_dir: str, override: Optional[str] = None
                      ) -> tuple[dict, Optional[str]]:
    """`(the CLIP vision config as an HF dict, the tower's local directory or None)` (library
    decision D12).

    Order: `override` (a CLIP directory); a `vision_config` entry (our converted checkpoints);
    `mm_vision_tower` as a directory relative to the checkpoint directory, or absolute; the
    built-in config of a known hub id.
    """
    if override is not None:
        if not os.path.isdir(override):
            raise FileNotFoundError(f"vision tower directory {override} does not exist")
        return vision_section(read_json(os.path.join(override, "config.json"))), override
    if isinstance(hf_config.get("vision_config"), dict):
        return dict(hf_config["vision_config"]), None
    name = hf_config.get("mm_vision_tower") or hf_config.get("vision_tower")
    if not name:
        raise ValueError(f"{checkpoint_dir}/config.json has no mm_vision_tower and no vision_config")
    for candidate in (os.path.join(checkpoint_dir, name), name):
        if os.path.isdir(candidate):
            return vision_section(read_json(os.path.join(candidate, "config.json"))), candidate
    if name in BUILTIN_VISION_CONFIGS:
        return BUILTIN_VISION_CONFIGS[name].to_hf_dict(), None
    raise FileNotFoundError(f"mm_vision_tower={name!r} is neither a directory (relative to {checkpoint_dir} or "
                            f"absolute) nor a built-in hub id ({sorted(BUILTIN_VISION_CONFIGS)})")


def resolve_vision_tower(hf_config: dict, checkpoint_dir: str, override: Optional[str] = None
                         ) -> tuple[ClipVisionConfig, Optional[str]]:
    """`(ClipVisionConfig, local tower directory or None)`: `find_vision_tower` parsed."""
    d, tower = find_vision_tower(hf_config, checkpoint_dir, override)
    return ClipVisionConfig.from_hf_dict(d), tower


def load_config(path: str, **overrides) -> tuple[LlavaMiniConfig, dict]:
    """`(LlavaMiniConfig, raw config.json dict)` of a checkpoint directory."""
    hf = read_json(os.path.join(path, "config.json"))
    vision, _ = resolve_vision_tower(hf, path)
    return LlavaMiniConfig.from_hf_dict(hf, vision, **overrides), hf


def load_generation_config(path: str, hf_config: Optional[dict] = None) -> GenerationConfig:
    """The checkpoint's `GenerationConfig`: `config.json`'s `eos_token_id` / `pad_token_id`, each
    replaced by `generation_config.json`'s when that file sets it (as HF `generate`)."""
    hf = read_json(os.path.join(path, "config.json")) if hf_config is None else hf_config
    d = {k: hf.get(k) for k in ("eos_token_id", "pad_token_id")}
    gpath = os.path.join(path, "generation_config.json")
    if os.path.exists(gpath):
        g = read_json(gpath)
        d.update({k: g[k] for k in d if g.get(k) is not None})
    return GenerationConfig.from_hf_dict(d)


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


def param_init_fn(model: LlavaMini, shardings=None):
    """`init_params` as one jitted `rng -> params` whose outputs are placed in `shardings` (a
    params-shaped tree; None: the default device), so no device ever holds the whole model.
    Keep the returned function to reuse its compile."""
    return jax.jit(lambda rng: init_params(model, rng), out_shardings=shardings)


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


def target_shardings(boxed, mesh=None, shardings=None):
    """Params-shaped tree of shardings: `shardings` as given, else from the logical rules over
    `mesh` (checking that every sharded dimension divides), else the default device."""
    if shardings is not None:
        return shardings
    if mesh is not None:
        check_divisible(boxed, mesh)
        return logical_shardings(boxed, mesh)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda _: device, nn.unbox(boxed))


def restore_params(path: str, cfg: LlavaMiniConfig, boxed, dtype, shardings) -> dict:
    """Params of a JAX checkpoint directory (`path/params`, see `jax_checkpoint`) as jax arrays of
    `dtype`, each leaf read straight into its sharding (each device reads only its slice).

    `boxed` is the model's abstract (logically partitioned) params tree, `shardings` a tree of the
    same structure. A checkpoint stored in the other layer layout (scanned vs `scan_layers=False`)
    is restacked on the host (the whole model passes through host memory once).
    """
    import orbax.checkpoint as ocp
    pdir = os.path.join(os.fspath(path), jax_checkpoint.PARAMS_DIR)
    reader = jax_checkpoint.ParamsReader(pdir)
    want = traverse_util.flatten_dict(nn.unbox(boxed))
    target = traverse_util.flatten_dict(shardings)
    if set(reader.paths) != set(want):
        return _restore_other_layout(reader, cfg, want, target, dtype)
    for p, sds in want.items():
        shape, _ = reader.shape_dtype(p)
        if shape != tuple(sds.shape):
            raise ValueError(f"{pdir}: param {jax_checkpoint.leaf_name(p)} has shape {shape}, but config.json "
                             f"gives {tuple(sds.shape)} (does config.json match the params?)")
    args = traverse_util.unflatten_dict({p: ocp.ArrayRestoreArgs(sharding=target[p], dtype=dtype,
                                                                 global_shape=tuple(want[p].shape)) for p in want})
    log.info("restoring %d params from %s", len(want), pdir)
    return ocp.PyTreeCheckpointer().restore(pdir, args=ocp.args.PyTreeRestore(restore_args=args))


def _restore_other_layout(reader, cfg: LlavaMiniConfig, want: dict, target: dict, dtype) -> dict:
    """Restacks (or unstacks) a checkpoint whose layer layout differs from the model's."""
    view = jax_checkpoint.HFView(reader, cfg)  # raises when the leaves fit neither layout
    log.info("%s stores scan_layers=%s; converting to the model's layout on the host", reader.directory,
             view.scan_layers)
    shapes = traverse_util.unflatten_dict({p: tuple(s.shape) for p, s in want.items()})
    params = hf_to_params(view.read, cfg, shapes, dtype=np.dtype(jnp.dtype(dtype)))
    return place_with_shardings(params, traverse_util.unflatten_dict(target), dtype)


def load_quantized(path: str, model: LlavaMini, quantize, mesh, shardings, load_float) -> tuple[LlavaMini, dict]:
    """`load_pretrained`'s quantized path: the params of a quantized checkpoint (`convert.quantize`,
    `quantization.json`) read as stored, or `load_float()`'s float params quantized leaf by leaf (each
    float leaf freed once quantized). Returns `(quantize.quantize_model(model, ...), params)`."""
    stored = quantization.read_quantize_config(path) if quantization.is_quantized_checkpoint(path) else None
    config = quantization.as_config(quantize)
    if stored is not None and config is not None and config.mode != stored.mode:
        raise ValueError(f"{path} holds {stored.mode} weights (quantization.json), not quantize={config.mode!r}")
    if shardings is not None:
        raise ValueError("load_pretrained: a quantized model takes mesh=, not shardings= (its params differ from the "
                         "float tree)")
    qmodel = quantization.quantize_model(model, stored or config)
    boxed = abstract_params(qmodel)
    target = target_shardings(boxed) if mesh is None else quantization.fit_shardings(logical_shardings(boxed, mesh),
                                                                                       boxed)
    if stored is not None:
        return qmodel, quantization.restore_quantized(os.path.join(path, jax_checkpoint.PARAMS_DIR), boxed, target)
    return qmodel, quantization.quantize_params(load_float(), boxed, target, consume=True)


def load_pretrained(path: str | os.PathLike, dtype=jnp.float32, compute_dtype=None, *, mesh=None,
                    shardings=None, scan_layers: bool = True, remat_policy: str = "none",
                    video_chunk_size: int = 16, quantize=None, **config_overrides) -> tuple[LlavaMini, dict]:
    """Loads a checkpoint directory. Returns `(model, params)` for `model.apply({"params": params}, ...)`.

    - `path`: an HF LLaVA-Mini (`llava_mini_llama`) or LLaVA-v1.5 (`llava_llama`) directory
      (`config.json` + `model.safetensors` or sharded with `model.safetensors.index.json`), or a
      directory written by `python -m convert.hf_to_jax` (orbax params + `config.json`).
    - `dtype`: parameter dtype; `compute_dtype`: activation dtype (default: `dtype`). Logits,
      norms, softmax statistics and the loss are float32 regardless.
    - `mesh`: a `jax.sharding.Mesh` with axes (`data`, `fsdp`, `tensor`): params are placed sharded
      by `sharding.LOGICAL_AXIS_RULES`, each device receiving only its slice. Or `shardings`: a
      params-shaped tree of `jax.sharding.Sharding`s to use as is.
    - `scan_layers`, `remat_policy`, `video_chunk_size`: runtime fields of the `LlavaMini` module.
    - `quantize`: `"int8"` | `"int4"` | a `quantize.QuantizeConfig`: weight-only quantization of the
      LLM's and pre-fusion's linear layers, LM head and embedding (see `quantize.py`); the model
      returned is the quantized twin. A quantized checkpoint (`python -m convert.quantize`) loads
      quantized without it, its weights never dequantized.
    - `config_overrides`: fields of `LlavaMiniConfig` (e.g. `max_length=2048`).

    The model's `generation` (EOS / pad ids) comes from `generation_config.json`, else
    `config.json` (`load_generation_config`). Vision config: `vision_config` in config.json, else
    `mm_vision_tower` as a directory (relative to `path` first, library decision D12), else the
    built-in config of its hub id. Vision weights come from the checkpoint itself
    (`model.vision_tower.vision_tower.*`); when absent, from the tower directory. Missing,
    unexpected or mis-shaped tensors raise ValueError listing them.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    hf = read_json(os.path.join(path, "config.json"))
    vision, tower_dir = resolve_vision_tower(hf, path)
    cfg = LlavaMiniConfig.from_hf_dict(hf, vision, **config_overrides)
    model = LlavaMini(cfg, dtype=compute_dtype or dtype, param_dtype=dtype, scan_layers=scan_layers,
                      remat_policy=remat_policy, video_chunk_size=video_chunk_size,
                      generation=load_generation_config(path, hf))
    if quantize is not None or quantization.is_quantized_checkpoint(path):
        return load_quantized(path, model, quantize, mesh, shardings, lambda: load_pretrained(
            path, dtype, compute_dtype, mesh=mesh, scan_layers=scan_layers, remat_policy=remat_policy,
            video_chunk_size=video_chunk_size, **config_overrides)[1])
    boxed = abstract_params(model)
    if jax_checkpoint.is_jax_checkpoint(path):
        return model, restore_params(path, cfg, boxed, dtype, target_shardings(boxed, mesh, shardings))
    params = read_hf_params(path, cfg, _shape_tree(boxed), np.dtype(jnp.dtype(dtype)), tower_dir)
    if mesh is None and shardings is None:
        return model, jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    return model, place_with_shardings(params, target_shardings(boxed, mesh, shardings), dtype)
