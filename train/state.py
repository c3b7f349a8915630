"""The train state, its split into trainable and frozen params, and its shardings.

`TrainState.params` is the whole params tree in the model's layout (what `convert.jax_to_hf`
exports); `opt_state` covers only the trainable params. Shardings come from the logical axis
names of the params (`llava_mini_jax.sharding.LOGICAL_AXIS_RULES`, plus `mesh.rules`); the
optimiser state's moments take the sharding of the param they belong to.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from llava_mini_jax import sharding as lsharding
from llava_mini_jax.quantize import dtype_bits

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    """`step`: optimiser steps taken (int32); `params`: full tree; `opt_state`: over the trainable
    params; `rng`: the run's base key (raw uint32[2]; step keys are `fold_in(rng, step)`);
    `skipped`: steps whose update was dropped for a non-finite loss or gradient."""

    step: jnp.ndarray
    params: Any
    opt_state: Any
    rng: jnp.ndarray
    skipped: jnp.ndarray


def split(params: dict, trainable: frozenset) -> tuple[dict, dict]:
    """`(trainable subtree, frozen subtree)` of a nested-dict params tree (paths as tuples)."""
    flat = traverse_util.flatten_dict(params)
    t = {p: v for p, v in flat.items() if p in trainable}
    f = {p: v for p, v in flat.items() if p not in trainable}
    return traverse_util.unflatten_dict(t), traverse_util.unflatten_dict(f)


def join(trainable: dict, frozen: dict) -> dict:
    flat = dict(traverse_util.flatten_dict(frozen))
    flat.update(traverse_util.flatten_dict(trainable))
    return traverse_util.unflatten_dict(flat)


# -- shardings ------------------------------------------------------------------------------------
def axis_rules(overrides: Optional[dict] = None) -> tuple:
    """`LOGICAL_AXIS_RULES` with `mesh.rules` overrides (an override replaces the rule of that name)."""
    overrides = dict(overrides or {})
    rules = []
    for name, axes in lsharding.LOGICAL_AXIS_RULES:
        if name in overrides:
            axes = overrides.pop(name)
            axes = tuple(axes) if isinstance(axes, list) else axes
        rules.append((name, axes))
    rules.extend((n, tuple(a) if isinstance(a, list) else a) for n, a in overrides.items())
    return tuple(rules)


def _axis_size(mesh, axes) -> int:
    if axes is None:
        return 1
    axes = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def param_shardings(boxed_abstract: Any, mesh: jax.sharding.Mesh, rules) -> dict:
    """`NamedSharding` per param from its logical names. A dimension the mesh axes do not divide
    (e.g. CLIP's 577 positions over 8 devices) stays replicated, logged once per param."""
    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed_abstract), rules)
    shapes = jax.tree.map(lambda x: tuple(x.shape), nn.unbox(boxed_abstract))
    flat_specs = traverse_util.flatten_dict(specs)
    flat_shapes = traverse_util.flatten_dict(shapes)
    out = {}
    for path, spec in flat_specs.items():
        shape = flat_shapes[path]
        entries = list(spec) + [None] * (len(shape) - len(spec))
        for i, axes in enumerate(entries):
            if axes is not None and shape[i] % _axis_size(mesh, axes):
                log.info("param %s dim %d (size %d) is not divisible by mesh axes %s (size %d): replicated",
                         "/".join(path), i, shape[i], axes, _axis_size(mesh, axes))
                entries[i] = None
        out[path] = NamedSharding(mesh, P(*entries))
    return traverse_util.unflatten_dict(out)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def opt_state_shardings(abstract_opt_state: Any, params_shardings: dict, mesh) -> Any:
    """A sharding per optimiser-state leaf: the sharding of the param whose path ends its key path
    (moments), else replicated (counts, scalars)."""
    flat = traverse_util.flatten_dict(params_shardings)
    by_path = {p: s for p, s in flat.items()}
    max_depth = max(len(p) for p in by_path)

    def pick(key_path, leaf):
        keys = tuple(k.key for k in key_path if isinstance(k, jax.tree_util.DictKey))
        for n in range(min(len(keys), max_depth), 0, -1):
            s = by_path.get(keys[-n:])
            if s is not None and len(s.spec) <= len(leaf.shape):
                return s
        return replicated(mesh)
    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def state_shardings(abstract_state: TrainState, params_shardings: dict, mesh) -> TrainState:
    return TrainState(step=replicated(mesh), params=params_shardings,
                      opt_state=opt_state_shardings(abstract_state.opt_state, params_shardings, mesh),
                      rng=replicated(mesh), skipped=replicated(mesh))


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying their sharding (restore targets)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def device_bytes(abstract: Any, shardings: Any) -> int:
    """Bytes one device holds of a tree with these shardings (no allocation; int4 at half a byte)."""
    def one(a, s):
        return -(-int(np.prod(s.shard_shape(tuple(a.shape)), dtype=np.int64)) * dtype_bits(a.dtype) // 8)
    return sum(jax.tree.leaves(jax.tree.map(one, abstract, shardings)))
