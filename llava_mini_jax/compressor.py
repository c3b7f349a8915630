"""The query-based compressor: Q = C*C learned queries cross-attend to the (unprojected) CLIP patches.

One `nn.MultiheadAttention`-style layer (SPEC A §3): queries `LN_q(query) + pos_embed`, keys
`LN_kv(x) + key_pos_embed`, values `LN_kv(x)` (no pos-embed), 8 heads, biased q/k/v and out
projections. `pos_embed` starts as the 2-D sin-cos table and is a parameter like the others (the
reference trains it in stage 2, SPEC D15; freezing it is the optimiser's business); for a key
grid of side s != C it is resized to s x s with torch-compatible bicubic. The width is the vision
width (library decision D1; the reference hard-codes 1024).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from . import initializers
from .initializers import sincos_pos_embed
from .interpolate import resize_grid_bicubic
from .layers import constrain, dense, layer_norm

Dtype = Any

ACT = ("activation_batch", "activation_length", "activation_embed")  # [B, K or Q, d]
ACT_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")  # [B, K, h, hd]
ACT_SCORES = ("activation_batch", "activation_heads", None, None)  # [B, h, Q, K]


class Compressor(nn.Module):
    """`x [B, K, d]` (K = s*s patches, row-major) -> `(out [B, Q, d], attn [B, Q, K])`.

    `attn` is the softmax weights averaged over heads, float32: the compression map users plot
    (also sown as `intermediates/compressor_attn`).
    """

    width: int
    size: int
    num_heads: int = 8
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray):
        b, k, d = x.shape
        if d != self.width:
            raise ValueError(f"compressor input width {d} != compressor width {self.width}")
        side = math.isqrt(k)
        if side * side != k:
            raise ValueError(f"compressor input has {k} tokens, not a square grid (mm_vision_select_feature must be "
                             "'patch')")
        q_count, hd = self.size * self.size, d // self.num_heads
        names = ("queries", "vision_embed")
        query = self.param("query", nn.with_logical_partitioning(initializers.query(), names),
                           (q_count, d), self.param_dtype)
        table = sincos_pos_embed(d, self.size)
        pos_embed = self.param("pos_embed", nn.with_logical_partitioning(
            lambda *_: jnp.asarray(table, self.param_dtype), names), (q_count, d), self.param_dtype)
        pos_embed = pos_embed.astype(jnp.float32)
        key_pos = resize_grid_bicubic(pos_embed.reshape(self.size, self.size, d), side).reshape(k, d)

        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        kv = layer_norm(self.eps, name="ln_kv", **kw)(constrain(x, ACT))
        q = layer_norm(self.eps, name="ln_q", **kw)(query)
        init = initializers.packed_in_proj(d)  # the reference's packed [3d, d] in_proj, split in three
        heads = ("vision_embed", "vision_heads", "head_dim")
        proj = lambda name: dense((self.num_heads, hd), heads, use_bias=True, bias_names=heads[1:],  # noqa: E731
                                  kernel_init=init, name=name, **kw)
        qp = proj("q_proj")(q + pos_embed.astype(self.dtype))  # [Q, h, hd]
        kp = constrain(proj("k_proj")(kv + key_pos.astype(self.dtype)), ACT_HEADS)  # [B, K, h, hd]
        vp = constrain(proj("v_proj")(kv), ACT_HEADS)
        logits = jnp.einsum("qhe,bkhe->bhqk", qp, kp, preferred_element_type=jnp.float32) * (hd ** -0.5)
        weights = jax.nn.softmax(constrain(logits, ACT_SCORES), axis=-1)
        out = constrain(jnp.einsum("bhqk,bkhe->bqhe", weights.astype(self.dtype), vp), ACT_HEADS)
        out = constrain(dense(d, ("vision_heads", "head_dim", "vision_embed"), axis=(-2, -1), use_bias=True,
                              bias_names=("vision_embed",), name="out_proj", **kw)(out), ACT)
        attn = weights.mean(axis=1)
        self.sow("intermediates", "compressor_attn", attn)
        return out, attn
