"""The one table that maps logical axis names to mesh axes.

Model code names the axes of every parameter (and of the main activations) with the logical
names below; it never names a mesh axis. Training and loading turn those names into
`NamedSharding`s over a mesh with axes (`data`, `fsdp`, `tensor`) through `LOGICAL_AXIS_RULES`.
A logical axis whose mesh axis is already used by another dimension of the same array stays
replicated (Flax picks the first free rule), so `[embed, embed]`-like shapes are safe.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from flax import linen as nn

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, Optional[object]], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("vision_embed", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("queries", None),
    ("norm", None),
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_vocab", "tensor"),
)


def make_mesh(shape: Sequence[int] = (1, 1, 1), devices=None) -> jax.sharding.Mesh:
    """A mesh with axes (`data`, `fsdp`, `tensor`) of the given sizes; -1 takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape {tuple(shape)}: expected 3 sizes for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)}: at most one -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh shape {tuple(shape)} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, found {len(devices)}")
    return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_shardings(boxed_tree, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES):
    """`NamedSharding`s for a tree of `nn.LogicallyPartitioned` boxes (e.g. from `jax.eval_shape(model.init)`)."""
    specs = nn.get_partition_spec(boxed_tree)
    specs = nn.logical_to_mesh(specs, rules)
    return jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> jax.sharding.NamedSharding:
    """Batch-major arrays: leading axis over (`data`, `fsdp`), the rest replicated."""
    spec = jax.sharding.PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1)))
    return jax.sharding.NamedSharding(mesh, spec)
