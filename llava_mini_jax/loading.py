"""`load_pretrained`: an HF LLaVA-Mini / LLaVA-v1.5 directory (or our converted one) -> (model, params)."""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from . import jax_checkpoint
from . import quantize as quantization
from .array_file import Box, full_box, normalize_index
from .config import BUILTIN_VISION_CONFIGS, ClipVisionConfig, GenerationConfig, LlavaMiniConfig
from .hf_weights import CLIP_PREFIX, Path, placements
from .model import LlavaMini
from .safetensors_io import CheckpointReader
from .sharding import check_divisible, logical_shardings

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


# --------------------------------------------------------------------------------------------
# Sources: `read(path, box) -> numpy block` of one leaf of our params tree.
# --------------------------------------------------------------------------------------------

class HFSource:
    """Leaves of our params tree read from the safetensors of an HF directory (and, for CLIP
    tensors the checkpoint lacks, from the vision tower's directory).

    Opening checks names and shapes (header only): missing, unexpected or mis-shaped tensors
    raise ValueError listing them. `read(path, box)` reads only the HF bytes behind the box of
    leaf `path` (`hf_weights.LeafLayout`), in the stored dtype; `bytes_read` counts them.
    """

    def __init__(self, path: str, cfg: LlavaMiniConfig, shapes: dict, tower_dir: Optional[str] = None):
        self.path = path
        self.reader = CheckpointReader(path)
        have = set(self.reader.names())
        pls = placements(cfg, any("layers" in p for p in shapes))
        expected = [pl.hf_name for pl in pls]
        missing = [n for n in expected if n not in have]
        self.tower = None
        if tower_dir is not None and missing and all(n.startswith(CLIP_PREFIX) for n in missing):
            self.tower = _VisionTower(tower_dir)
            log.info("checkpoint has no vision tower weights; reading them from %s", tower_dir)
        elif missing:
            raise ValueError(f"{path}: {len(missing)} tensors missing from the checkpoint: {missing[:20]}"
                             + (" ..." if len(missing) > 20 else ""))
        unexpected = sorted(n for n in have - set(expected) if not n.endswith(_IGNORED_SUFFIXES))
        if unexpected:
            raise ValueError(f"{path}: {len(unexpected)} unexpected tensors (unknown to a {cfg.mode} model with "
                             f"this config): {unexpected[:20]}" + (" ..." if len(unexpected) > 20 else ""))
        self._where: dict = {}  # leaf path -> [(hf name, layout, hf shape)] per layer (one for unstacked)
        hint = "(does config.json match the weights?)"
        for pl in pls:
            if pl.hf_name in have:
                hf_shape = self.reader.shape_dtype(pl.hf_name)[0]
            else:
                hf_shape = self.tower.shape(pl.hf_name, path)
            for leaf, layout in zip(pl.leaves, pl.rule.layouts):
                try:
                    got = layout.leaf_shape(hf_shape)
                except ValueError as e:  # e.g. rows that do not split into the config's heads
                    raise ValueError(f"{pl.hf_name}: shape {hf_shape} cannot be converted ({e}) {hint}") from e
                want = tuple(shapes[leaf])
                if (got if pl.layer is None else (want[0],) + got) != want:
                    raise ValueError(f"{pl.hf_name}: shape {hf_shape} (as {got}) does not fit param "
                                     f"{'/'.join(leaf)} of shape {want} {hint}")
                self._where.setdefault(leaf, []).append((pl.hf_name, layout, hf_shape))

    def read(self, path: Path, box: Box, dtype) -> np.ndarray:
        """Box `box` of leaf `path` as `dtype` (cast in the same copy that lays it out)."""
        entries = self._where[path]
        if len(entries) == 1 and "layers" not in path:
            return self._read_one(entries[0], box, np.empty(tuple(b - a for a, b in box), dtype))
        (l0, l1), rest = box[0], tuple(box[1:])
        out = np.empty(tuple(b - a for a, b in box), dtype)
        for i in range(l0, l1):
            self._read_one(entries[i], rest, out[i - l0])
        return out

    def _read_one(self, entry, box: Box, out: np.ndarray) -> np.ndarray:
        name, layout, hf_shape = entry
        if name in self.reader.weight_map:
            return layout.read(lambda b: self.reader.read_box(name, b), hf_shape, box, out)
        return layout.read(lambda b: self.tower.read_box(name, b), hf_shape, box, out)

    def layerwise(self, path: Path) -> bool:
        """Reading one layer of a stacked leaf costs one layer's bytes (one tensor per layer)."""
        return True

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read + (self.tower.reader.bytes_read if self.tower is not None else 0)

    def close(self) -> None:
        self.reader.close()
        if self.tower is not None:
            self.tower.reader.close()


class _VisionTower:
    """CLIP tensors under the checkpoint's names (`model.vision_tower.vision_tower.vision_model.*`)
    read from a CLIP directory (transformers 4 names, or 5's without `vision_model.`)."""

    def __init__(self, tower_dir: str):
        self.tower_dir = tower_dir
        self.reader = CheckpointReader(tower_dir)
        self._names = set(self.reader.names())

    def _local(self, hf_name: str) -> Optional[str]:
        local = hf_name[len("model.vision_tower.vision_tower."):]  # vision_model.* (transformers 4)
        for candidate in (local, local[len("vision_model."):]):  # transformers 5 drops the prefix
            if candidate in self._names:
                return candidate
        return None

    def shape(self, hf_name: str, checkpoint: str) -> tuple:
        local = self._local(hf_name)
        if local is None:
            raise ValueError(f"{hf_name} is neither in {checkpoint} nor in the vision tower at {self.tower_dir}")
        return self.reader.shape_dtype(local)[0]

    def read_box(self, hf_name: str, box: Box) -> np.ndarray:
        return self.reader.read_box(self._local(hf_name), box)


class JaxSource:
    """Leaves of our params tree read from a JAX checkpoint's `params/` (`jax_checkpoint.ParamsReader`),
    in the stored layer layout or the other one (`layers` stacked vs `layers_{i}`), one layer at a
    time either way. Opening checks that every leaf is stored with its shape."""

    def __init__(self, directory: str, shapes: dict, cfg: LlavaMiniConfig):
        self.reader = jax_checkpoint.ParamsReader(directory)
        stored = set(self.reader.paths)
        self.restack = set(shapes) != stored
        if self.restack:
            log.info("%s stores the other layer layout; restacking layer by layer", directory)
        problems = []
        for path, shape in shapes.items():
            try:
                got = self._stored_shape(path, shape, stored)
            except KeyError as e:
                problems.append(str(e.args[0]))
                continue
            if got != tuple(shape):
                raise ValueError(f"{directory}: param {jax_checkpoint.leaf_name(path)} has shape {got}, but "
                                 f"config.json gives {tuple(shape)} (does config.json match the params?)")
        if problems:
            raise ValueError(f"{directory} does not hold the params of this config.json ({cfg.mode} model): "
                             f"{len(problems)} params missing: {problems[:10]}")

    def _stored_shape(self, path: Path, shape: tuple, stored: set) -> tuple:
        if path in stored:
            return tuple(self.reader.shape_dtype(path)[0])
        k = _layer_key(path)
        if k is not None and path[k] == "layers":  # model stacked, checkpoint per layer
            leaves = [path[:k] + (f"layers_{i}",) + path[k + 1:] for i in range(shape[0])]
            if not all(p in stored for p in leaves) or path[:k] + (f"layers_{shape[0]}",) + path[k + 1:] in stored:
                raise KeyError(jax_checkpoint.leaf_name(path))
            return (shape[0],) + tuple(self.reader.shape_dtype(leaves[0])[0])
        if k is not None:  # model per layer, checkpoint stacked
            stacked = path[:k] + ("layers",) + path[k + 1:]
            if stacked not in stored:
                raise KeyError(jax_checkpoint.leaf_name(path))
            full = tuple(self.reader.shape_dtype(stacked)[0])
            if int(path[k][len("layers_"):]) >= full[0]:
                raise KeyError(jax_checkpoint.leaf_name(path))
            return full[1:]
        raise KeyError(jax_checkpoint.leaf_name(path))

    def read(self, path: Path, box: Box, dtype) -> np.ndarray:
        """Box `box` of leaf `path` as `dtype`."""
        return self._read(path, box).astype(dtype, copy=False)

    def _read(self, path: Path, box: Box) -> np.ndarray:
        if not self.restack or path in self._paths:
            return self.reader.read_box(path, box)
        k = _layer_key(path)
        if path[k] == "layers":
            (l0, l1), rest = box[0], tuple(box[1:])
            return np.stack([self.reader.read_box(path[:k] + (f"layers_{i}",) + path[k + 1:], rest)
                             for i in range(l0, l1)])
        i = int(path[k][len("layers_"):])
        return self.reader.read_box(path[:k] + ("layers",) + path[k + 1:], ((i, i + 1),) + tuple(box))[0]

    def layerwise(self, path: Path) -> bool:
        """Reading one layer costs one layer's bytes: stored per layer, or stacked in chunks of one
        layer (orbax's own chunks of a training checkpoint may hold every layer of a shard)."""
        return path not in self._paths or self.reader.layer_chunked(path)

    @property
    def _paths(self) -> set:
        return self.reader._known

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read

    def close(self) -> None:
        pass


def _layer_key(path: Path) -> Optional[int]:
    """Index of the `layers` / `layers_{i}` key of a leaf path, or None."""
    for k, key in enumerate(path):
        if key == "layers" or (key.startswith("layers_") and key[len("layers_"):].isdigit()):
            return k
    return None


# --------------------------------------------------------------------------------------------
# Streaming leaves into their shardings.
# --------------------------------------------------------------------------------------------

def target_shardings(boxed, mesh=None, shardings=None):
    """Params-shaped tree of shardings: `shardings` as given, else from the logical rules over
    `mesh` (checking that every sharded dimension divides), else None (the default device,
    uncommitted)."""
    if shardings is not None:
        return shardings
    if mesh is not None:
        check_divisible(boxed, mesh)
        return logical_shardings(boxed, mesh)
    return None


# A stacked leaf larger than this (in the target dtype) is built one layer at a time; smaller ones
# are read whole (no device-side assembly to compile), which bounds the host staging by it.
LAYERWISE_BYTES = 256 << 20


def stream_params(source, boxed, shardings, dtype, layerwise_bytes: Optional[int] = None) -> dict:
    """The params tree (jax arrays of `dtype`) built leaf by leaf from `source.read(path, box, dtype)`.

    `boxed`: the model's abstract params tree; `shardings`: a tree of the same structure (None:
    the default device). Each leaf goes straight into its sharding: `source.read` is asked only
    for the boxes this process's devices hold (once per distinct box), and a stacked (`layers`)
    leaf larger than `layerwise_bytes` (default `LAYERWISE_BYTES`) for which
    `source.layerwise(path)` is built one layer at a time into a donated device buffer, so host
    memory holds at most one layer's blocks of one leaf (or one leaf up to `layerwise_bytes`)
    beyond what the devices hold.
    """
    limit = LAYERWISE_BYTES if layerwise_bytes is None else layerwise_bytes
    dtype = np.dtype(jnp.dtype(dtype))
    abstract = traverse_util.flatten_dict(nn.unbox(boxed))
    targets = traverse_util.flatten_dict(shardings) if shardings is not None else dict.fromkeys(abstract)
    out = {}
    for path, sds in abstract.items():
        k = _layer_key(path)
        big = int(np.prod(sds.shape, dtype=np.int64)) * dtype.itemsize > limit
        out[path] = _stream_leaf(functools.partial(source.read, path), tuple(sds.shape), targets[path], dtype,
                                 stacked=big and k is not None and path[k] == "layers" and source.layerwise(path))
    return traverse_util.unflatten_dict(out)


def _stream_leaf(read, shape: tuple, sharding, dtype: np.dtype, stacked: bool):
    layer_sharding = _layer_sharding(sharding) if stacked and len(shape) > 1 and shape[0] > 1 else False
    if layer_sharding is False:
        return _put(read, shape, sharding, dtype)
    buf = jnp.zeros(shape, dtype) if sharding is None else jnp.zeros(shape, dtype, device=sharding)
    set_layer = _layer_setter(sharding)
    for i in range(shape[0]):
        layer = _put(lambda box, dt, i=i: read(((i, i + 1),) + tuple(box), dt)[0], shape[1:], layer_sharding, dtype)
        buf = set_layer(buf, layer, i)
    return buf


def _put(read, shape: tuple, sharding, dtype: np.dtype):
    """One array of `shape` in `sharding` (None: default device) from `read(box, dtype)`, each
    distinct box of this process's devices read once."""
    if sharding is None:
        return jnp.asarray(read(full_box(shape), dtype))
    blocks: dict = {}

    def block(index):
        box = normalize_index(index, shape)
        if box not in blocks:
            blocks[box] = read(box, dtype)
        return blocks[box]
    return jax.make_array_from_callback(shape, sharding, block)


def _layer_sharding(sharding):
    """The sharding of one layer of a stacked leaf in `sharding`, or False when the layer axis is
    itself sharded (the leaf is then read whole per device)."""
    if sharding is None or isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return sharding
    if isinstance(sharding, jax.sharding.NamedSharding) and (not sharding.spec or sharding.spec[0] is None):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec[1:]))
    return False


@functools.lru_cache(maxsize=None)
def _layer_setter(sharding):
    """Jitted `(buffer, layer, i) -> buffer with layer i replaced`, the buffer donated."""
    def set_layer(buf, layer, i):
        return jax.lax.dynamic_update_index_in_dim(buf, layer.astype(buf.dtype), i, 0)
    if sharding is None:
        return jax.jit(set_layer, donate_argnums=0)
    return jax.jit(set_layer, donate_argnums=0, out_shardings=sharding)


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
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda _: device, nn.unbox(boxed))
    else:
        target = quantization.fit_shardings(logical_shardings(boxed, mesh), boxed)
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
    targets = target_shardings(boxed, mesh, shardings)
    shapes = {p: tuple(s.shape) for p, s in traverse_util.flatten_dict(nn.unbox(boxed)).items()}
    if jax_checkpoint.is_jax_checkpoint(path):
        source = JaxSource(os.path.join(path, jax_checkpoint.PARAMS_DIR), shapes, cfg)
    else:
        source = HFSource(path, cfg, shapes, tower_dir)
    try:
        params = stream_params(source, boxed, targets, dtype)
    finally:
        source.close()
    log.info("loaded %s: read %.3f GB", path, source.bytes_read / 1e9)
    return model, params
