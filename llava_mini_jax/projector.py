"""The multimodal projector: vision width d -> LLM width D (`linear`, `mlp{k}x_gelu`, `identity`).

One module serves every use (compressed tokens, global view, HD tiles, baseline patches).
`mlp{k}x_gelu` is Linear, then k-1 times (exact erf GELU, Linear); params `linear_0..linear_{k-1}`
map to the reference's `mm_projector.{0,2,4,..}`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from .config import projector_layers
from .layers import constrain, dense

Dtype = Any


class Projector(nn.Module):
    """`[..., d] -> [..., D]`."""

    projector_type: str
    out_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        n = projector_layers(self.projector_type)
        kw = dict(use_bias=True, bias_names=("embed",), dtype=self.dtype, param_dtype=self.param_dtype)
        for i in range(n):
            if i:
                x = jax.nn.gelu(x, approximate=False)
            names = ("vision_embed", "embed") if i == 0 else ("mlp", "embed")
            x = dense(self.out_dim, names, name=f"linear_{i}", **kw)(x)
            if x.ndim == 3:  # [n, N, D]: batch, tokens, width (the middle width is the `mlp` of the kernels)
                x = constrain(x, ("activation_batch", "activation_length",
                                  "activation_embed" if i == n - 1 else "activation_mlp"))
        return x
