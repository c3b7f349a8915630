"""CLIP ViT vision encoder (HF `CLIPVisionModel` numerics), returning one chosen hidden state.

The tower is frozen in LLaVA-Mini: the model wraps its output in `stop_gradient`. Only the layers
needed for `hs[select_layer]` run; the rest (and `post_layernorm`, never applied, SPEC A §2) stay
in the params so checkpoints round-trip.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from .config import ClipVisionConfig
from .layers import constrain, dense, layer_norm, run_layers

Dtype = Any

# Logical names of the activations (see `sharding.LOGICAL_AXIS_RULES`): the vision tower's rows
# (images) are a batch dimension and its residual stream follows the LLM's.
ACT = ("activation_batch", "activation_length", "activation_embed")  # [n, N+1, d]
ACT_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
ACT_MLP = ("activation_batch", "activation_length", "activation_mlp")


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


def activation(name: str):
    if name == "quick_gelu":
        return quick_gelu
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    return lambda x: jax.nn.gelu(x, approximate=True)  # gelu_new / gelu_pytorch_tanh


class ClipLayer(nn.Module):
    """Pre-LN transformer block with biased projections and no attention mask."""

    config: ClipVisionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, _=None):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        heads = (cfg.num_heads, cfg.head_dim)
        qkv_names = ("vision_embed", "vision_heads", "head_dim")
        x = constrain(x, ACT)
        h = layer_norm(cfg.layer_norm_eps, name="layer_norm1", **kw)(x)
        proj = lambda name: constrain(dense(heads, qkv_names, use_bias=True, bias_names=qkv_names[1:],  # noqa: E731
                                            name=name, **kw)(h), ACT_HEADS)
        q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
        attn = constrain(jax.nn.dot_product_attention(q, k, v, scale=cfg.head_dim ** -0.5), ACT_HEADS)
        x = constrain(x + dense(cfg.hidden_size, ("vision_heads", "head_dim", "vision_embed"), axis=(-2, -1),
                                use_bias=True, bias_names=("vision_embed",), name="out_proj", **kw)(attn), ACT)
        h = layer_norm(cfg.layer_norm_eps, name="layer_norm2", **kw)(x)
        h = dense(cfg.intermediate_size, ("vision_embed", "vision_mlp"), use_bias=True, bias_names=("vision_mlp",),
                  name="fc1", **kw)(h)
        h = constrain(activation(cfg.hidden_act)(constrain(h, ACT_MLP)), ACT_MLP)
        x = constrain(x + dense(cfg.hidden_size, ("vision_mlp", "vision_embed"), use_bias=True,
                                bias_names=("vision_embed",), name="fc2", **kw)(h), ACT)
        return x, None


class ClipVisionEncoder(nn.Module):
    """pixels `[n, 3, H, W]` (CLIP-normalised) -> hidden state `hs[num_layers]` `[n, N+1, d]`.

    `hs[0]` is the `pre_layrnorm` output and `hs[i]` the output of layer i, so
    `mm_vision_select_layer = -2` is `num_layers = L - 1`.
    """

    config: ClipVisionConfig
    scan_layers: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jnp.ndarray, num_layers: int) -> jnp.ndarray:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        n, c, h, w = pixels.shape
        p, g = cfg.patch_size, cfg.grid
        if (c, h, w) != (cfg.num_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"images have per-view shape {(c, h, w)}; this CLIP expects "
                             f"{(cfg.num_channels, cfg.image_size, cfg.image_size)}")
        init = nn.initializers.normal(0.02)
        patch_kernel = self.param("patch_embedding", nn.with_logical_partitioning(init, (None, None, None,
                                                                                         "vision_embed")),
                                  (c, p, p, cfg.hidden_size), self.param_dtype)
        class_emb = self.param("class_embedding", nn.with_logical_partitioning(init, ("vision_embed",)),
                               (cfg.hidden_size,), self.param_dtype)
        pos_emb = self.param("position_embedding", nn.with_logical_partitioning(init, (None, "vision_embed")),
                             (cfg.num_patches + 1, cfg.hidden_size), self.param_dtype)
        # Patch (row, col) -> token row*g + col: a stride-p convolution without bias, as a matmul.
        patches = pixels.astype(self.dtype).reshape(n, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)
        x = jnp.einsum("nyxcij,cijd->nyxd", patches, patch_kernel.astype(self.dtype)).reshape(n, g * g, -1)
        cls = jnp.broadcast_to(class_emb.astype(self.dtype), (n, 1, cfg.hidden_size))
        x = jnp.concatenate([cls, x], axis=1) + pos_emb.astype(self.dtype)[None]
        x = layer_norm(cfg.layer_norm_eps, name="pre_layrnorm", **kw)(constrain(x, ACT))
        x, _ = run_layers(ClipLayer, dict(config=cfg, **kw), cfg.num_layers, x, (), (None,),
                          scan=self.scan_layers, initializing=self.is_initializing(), num_used=num_layers)
        post = layer_norm(cfg.layer_norm_eps, name="post_layernorm", **kw)
        if self.is_initializing():
            post(x[:, 0])  # declared for round trips; never applied (SPEC A §2)
        return x
