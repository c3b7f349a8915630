"""The one table that maps logical axis names to mesh axes.

Model code names the axes of every parameter and of the main activations with the logical names
below; it never names a mesh axis. Training, generation and loading turn those names into
`NamedSharding`s over a mesh with axes (`data`, `fsdp`, `tensor`) through `LOGICAL_AXIS_RULES`:
parameters through `logical_shardings`, activations through the `layers.constrain` calls in the
model, which take effect under `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`.
When two dimensions of one array map to the same mesh axis, Flax gives it to one of them and
leaves the other replicated (e.g. the projector's `[vision_embed, embed]` kernel becomes
`P(None, "fsdp")`), so such shapes are valid.

Activations (the LLM, the pre-fusion layers, the vision tower and the compressor alike):

* `activation_batch` -> (`data`, `fsdp`): rows (images for the vision tower) are split over every
  data-parallel device; FSDP gathers each layer's weights and keeps its own rows.
* `activation_length` -> None: no sequence parallelism.
* `activation_embed` -> None: the residual stream (and every width-D activation: embeddings,
  projector outputs, the compressor's output) is replicated over `tensor`; tensor parallelism
  splits only inside a layer. Putting it on `tensor` is also wrong on XLA:CPU (jax 0.10.2): after
  a kernel whose output axis is on `fsdp` it computes wrong numbers (`tests/test_sharding.py`
  keeps the 6-line reproduction as a canary).
* `activation_heads`, `activation_kv_heads` -> `tensor`: queries, keys, values, the attention
  output and the compressor's scores are split by head (Megatron attention).
* `activation_mlp` -> `tensor`: the MLP's hidden columns (and the projector's middle width).
* `activation_vocab` -> `tensor`: logits (one loss chunk's in training) split over the vocabulary;
  the log-sum-exp reduces across `tensor`.
* `activation_head_dim` -> None.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import jax
import numpy as np
from flax import linen as nn

MESH_AXES = ("data", "fsdp", "tensor")
DATA_AXES = ("data", "fsdp")  # the axes batch rows are split over

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
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """Resolves a (`data`, `fsdp`, `tensor`) shape over `num_devices`: one size may be -1 (the
    remaining devices). ValueError naming the sizes when it does not fit."""
    shape = [int(s) for s in shape]
    if len(shape) != 3:
        raise ValueError(f"mesh shape {tuple(shape)}: expected 3 sizes for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)}: at most one -1")
    named = " ".join(f"{a}={s}" for a, s in zip(MESH_AXES, shape))
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh {named}: the fixed sizes ({known}) do not divide the {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        named = " ".join(f"{a}={s}" for a, s in zip(MESH_AXES, shape))
        raise ValueError(f"mesh {named} needs {int(np.prod(shape))} devices, found {num_devices}")
    return tuple(shape)


def make_mesh(shape: Sequence[int] = (1, 1, 1), devices=None) -> jax.sharding.Mesh:
    """A mesh with axes (`data`, `fsdp`, `tensor`) of the given sizes; -1 takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.sharding.Mesh(np.asarray(devices).reshape(mesh_shape(shape, len(devices))), MESH_AXES)


@contextlib.contextmanager
def activation_sharding(mesh: Optional[jax.sharding.Mesh], rules=LOGICAL_AXIS_RULES):
    """Makes the model's activation constraints apply to what is traced inside: the mesh (as an
    abstract mesh, so this works inside `jax.jit`'s trace as well as around a call) and the logical
    rules. `mesh=None` sets nothing (constraints stay no-ops)."""
    if mesh is None:
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield


def mesh_of(tree) -> Optional[jax.sharding.Mesh]:
    """The mesh of the first `NamedSharding` leaf of a tree of arrays spread over several devices
    (e.g. params from `load_pretrained(mesh=...)`), else None."""
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    return None


def logical_shardings(boxed_tree, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES):
    """`NamedSharding`s for a tree of `nn.LogicallyPartitioned` boxes (e.g. from `jax.eval_shape(model.init)`)."""
    specs = nn.get_partition_spec(boxed_tree)
    specs = nn.logical_to_mesh(specs, rules)
    return jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def check_divisible(boxed_tree, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES) -> None:
    """Raises ValueError naming the first parameter whose sharded dimension does not divide by its
    mesh axes (e.g. 8 kv heads on a `tensor` axis of 16)."""
    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed_tree), rules)
    flat_specs = jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
    shapes = jax.tree.leaves(nn.unbox(boxed_tree))
    for (path, spec), leaf in zip(flat_specs, shapes):
        for dim, axes in zip(leaf.shape, spec):
            axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
            size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
            if dim % size:
                name = "/".join(str(getattr(k, "key", k)) for k in path)
                raise ValueError(f"parameter {name} of shape {tuple(leaf.shape)} cannot be sharded as {spec}: "
                                 f"dimension {dim} is not divisible by mesh axes {axes} of size {size} "
                                 f"(mesh {dict(mesh.shape)})")


def batch_sharding(mesh: jax.sharding.Mesh, batch_axis: int = 0) -> jax.sharding.NamedSharding:
    """Batch-major arrays: axis `batch_axis` (the rows) over (`data`, `fsdp`), every other axis
    replicated. `batch_axis=1` for micro-batched `[A, rows, ...]` training batches."""
    spec = jax.sharding.PartitionSpec(*([None] * batch_axis), DATA_AXES)
    return jax.sharding.NamedSharding(mesh, spec)


def place_with_shardings(params: dict, shardings, dtype) -> dict:
    """Host arrays -> jax arrays of `dtype`, each leaf straight into its sharding (each device
    receives only its slice). `shardings` is a tree of the same structure as `params`."""
    def put(a, s):
        a = np.asarray(a).astype(dtype)
        return jax.make_array_from_callback(a.shape, s, lambda idx: a[idx])
    return jax.tree.map(put, params, shardings)
