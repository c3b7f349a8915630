"""Small building blocks shared by the towers: dense layers with logical axis names, activation
constraints, norms, scanning.

Every parameter is declared at its full rank through `nn.with_logical_partitioning`, and the main
activations are constrained with `constrain`, both with names from `sharding.LOGICAL_AXIS_RULES`;
model code never names a mesh axis.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

from .initializers import hf_default

Dtype = Any
Names = Sequence[Optional[str]]

default_kernel_init = hf_default()  # HF `_init_weights` (initializer_range 0.02)


class DenseGeneral(nn.Module):
    """`y = x . kernel (+ bias)`, contracting the input axes `axis` with a full-rank kernel.

    The kernel is declared at its full shape `[*in_dims, *features]` (e.g. `[embed, heads, head_dim]`)
    and initialised at that shape, so its logical names apply to the array as stored (the MaxText
    pattern): under a mesh and logical rules the kernel is constrained as declared. (Flax's
    `nn.DenseGeneral` initialises a flattened 2-D kernel and applies the names to it, which fails under
    a global mesh for kernels of rank > 2.) The output is `[*batch dims, *features]`; inputs and
    kernel are cast to `dtype`.
    """

    features: tuple
    kernel_names: tuple
    axis: tuple = (-1,)
    use_bias: bool = False
    bias_names: tuple = ()
    kernel_init: Callable = default_kernel_init
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        axis = tuple(sorted(a % x.ndim for a in self.axis))
        if len(self.kernel_names) != len(axis) + len(self.features):
            raise ValueError(f"dense {self.name}: {len(self.kernel_names)} kernel names {self.kernel_names} for a "
                             f"kernel of rank {len(axis) + len(self.features)} (inputs {len(axis)}, features "
                             f"{self.features})")
        shape = tuple(x.shape[a] for a in axis) + tuple(self.features)
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_names)),
                            shape, self.param_dtype)
        # promote_dtype (not `.astype`): weight-only quantization (`quantize.py`, qwix) intercepts it
        # to pass a quantized kernel through unchanged.
        x, kernel = promote_dtype(x, kernel, dtype=self.dtype)
        y = jax.lax.dot_general(x, kernel, ((axis, tuple(range(len(axis)))), ((), ())))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                   tuple(self.bias_names)),
                              tuple(self.features), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def dense(features, names: Names, *, axis=-1, use_bias=False, bias_names: Optional[Names] = None,
          kernel_init: Callable = default_kernel_init, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, name: Optional[str] = None) -> DenseGeneral:
    """A `DenseGeneral` whose full-rank kernel (and bias) carry logical axis names.

    The kernel has shape `[*in_dims, *features]`, e.g. `[embed, heads, head_dim]` for a query
    projection; `names` names those dims in order.
    """
    features = (features,) if isinstance(features, int) else tuple(features)
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return DenseGeneral(features=features, kernel_names=tuple(names), axis=axis, use_bias=use_bias,
                        bias_names=tuple(bias_names or ()), kernel_init=kernel_init, dtype=dtype,
                        param_dtype=param_dtype, name=name)


def constrain(x: jnp.ndarray, names: Names) -> jnp.ndarray:
    """`x` constrained to the logical axes `names` (one per dim; see `sharding.LOGICAL_AXIS_RULES`).

    A no-op unless a mesh (`jax.set_mesh`) and logical rules (`nn.logical_axis_rules`) are active.
    """
    if len(names) != x.ndim:
        raise ValueError(f"constraint names {tuple(names)} for an array of shape {tuple(x.shape)}")
    return nn.with_logical_constraint(x, tuple(names))


def layer_norm(eps: float, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               name: Optional[str] = None) -> nn.LayerNorm:
    """LayerNorm (statistics in float32) with `scale`/`bias` named `norm`."""
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)), name=name)


class RMSNorm(nn.Module):
    """`scale * x / sqrt(mean(x^2) + eps)`, statistics in float32 (as HF Llama)."""

    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def remat_policy(name: str):
    """`none` -> no remat (None), `full` -> save nothing, `dots` -> save matmul outputs."""
    if name == "none":
        return None
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    raise ValueError(f"remat_policy={name!r}: expected 'none', 'full' or 'dots'")


def run_layers(layer_cls, layer_kwargs: dict, num_layers: int, carry, broadcast_args: tuple, scanned_args: tuple,
               *, scan: bool, initializing: bool, remat: str = "none", num_used: Optional[int] = None,
               name: str = "layers"):
    """Runs a stack of `num_layers` identical layers on `carry`.

    `layer_cls(**layer_kwargs)(carry, *broadcast_args, *scanned_args) -> (carry, out)`. With
    `scan=True` the layers' params are stacked under a leading `layers` axis and run by `nn.scan`
    (`scanned_args` are sliced per layer, outputs stacked); otherwise they are separate submodules
    `{name}_{i}`. `num_used < num_layers` runs only the first layers (CLIP's select layer); all
    layers still exist in the params (all run while `initializing`), so checkpoints round-trip.

    Returns `(carry, outs)` with `outs` stacked over the layers that ran.
    """
    num_used = num_layers if num_used is None else num_used
    policy = remat_policy(remat)
    cls = layer_cls if policy is None else nn.remat(layer_cls, policy=policy, prevent_cse=not scan)
    if scan:
        def scanned(length):
            return nn.scan(cls, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
                           in_axes=(nn.broadcast,) * len(broadcast_args) + (0,) * len(scanned_args),
                           length=length, metadata_params={nn.PARTITION_NAME: "layers"})
        module_cls = scanned(num_layers)
        if num_used < num_layers and not initializing:
            module_cls = nn.map_variables(
                scanned(num_used), "params", init=False,
                trans_in_fn=lambda v: jax.tree.map(lambda a: a[:num_used], v))
            scanned_args = jax.tree.map(lambda a: a[:num_used], scanned_args)
        return module_cls(**layer_kwargs, name=name)(carry, *broadcast_args, *scanned_args)
    outs = []
    for i in range(num_layers if initializing else num_used):
        sliced = jax.tree.map(lambda a: a[i], scanned_args)
        carry, out = cls(**layer_kwargs, name=f"{name}_{i}")(carry, *broadcast_args, *sliced)
        if i < num_used:
            outs.append(out)
    stacked = None if not outs or outs[0] is None else jax.tree.map(lambda *a: jnp.stack(a), *outs)
    return carry, stacked
