"""Llama decoder: attention (MHA/GQA, RoPE), SiLU-gated MLP, layer, stack, and the causal LM.

The same `DecoderStack` serves the LLM and the pre-fusion layers (which have no final norm).
The KV cache is explicit and functional: a dict `{"k", "v"}` of `[layers, B, S, kv_heads, head_dim]`
arrays passed in and returned, written at a per-row `cache_index [B]`.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from .config import LlamaConfig
from .layers import RMSNorm, constrain, dense, run_layers
from .loss import chunked_cross_entropy
from .rope import inverse_frequencies, rope_angles, apply_rope

Dtype = Any
Cache = dict  # {"k": [.., B, S, KV, hd], "v": [.., B, S, KV, hd]}

# Logical names of the activations (see `sharding.LOGICAL_AXIS_RULES`).
ACT = ("activation_batch", "activation_length", "activation_embed")  # residual stream [B, T, D]
ACT_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")  # [B, T, H, hd]
ACT_KV = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")  # [B, S, KV, hd]
ACT_MLP = ("activation_batch", "activation_length", "activation_mlp")  # [B, T, I]
ACT_VOCAB = ("activation_batch", "activation_length", "activation_vocab")  # logits [B, T, V]


def write_cache(cache: jnp.ndarray, update: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """Writes `update [B, T, ...]` into `cache [B, S, ...]` at rows' own offsets `index [B]`."""
    def one(c, u, i):
        return jax.lax.dynamic_update_slice_in_dim(c, u.astype(c.dtype), i, axis=0)
    return jax.vmap(one)(cache, update, index)


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention with rotary embeddings and no biases."""

    config: LlamaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache: Optional[Cache] = None, cache_index=None):
        """x `[B, T, D]`; cos/sin `[B, T, hd]`; mask bool `[B, 1, T, S]` (True = may attend); cache
        `{"k","v"}: [B, S, KV, hd]` written at `cache_index [B]` (then S keys are attended), or None
        (S = T). Returns `([B, T, D], new cache or None)`."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = dense((cfg.num_heads, cfg.head_dim), ("embed", "heads", "head_dim"), name="q_proj", **kw)(x)
        k = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), name="k_proj", **kw)(x)
        v = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), name="v_proj", **kw)(x)
        q = constrain(apply_rope(q, cos, sin), ACT_HEADS)
        k, v = constrain(apply_rope(k, cos, sin), ACT_KV), constrain(v, ACT_KV)
        new_cache = None
        if cache is not None:
            k = constrain(write_cache(cache["k"], k, cache_index), ACT_KV)
            v = constrain(write_cache(cache["v"], v, cache_index), ACT_KV)
            new_cache = {"k": k, "v": v}
            k, v = k.astype(self.dtype), v.astype(self.dtype)
        out = constrain(jax.nn.dot_product_attention(q, k, v, mask=mask, scale=cfg.head_dim ** -0.5), ACT_HEADS)
        out = dense(cfg.hidden_size, ("heads", "head_dim", "embed"), axis=(-2, -1), name="o_proj", **kw)(out)
        return constrain(out, ACT), new_cache


class MLP(nn.Module):
    """`down(silu(gate(x)) * up(x))`."""

    config: LlamaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        gate = constrain(dense(cfg.intermediate_size, ("embed", "mlp"), name="gate_proj", **kw)(x), ACT_MLP)
        up = constrain(dense(cfg.intermediate_size, ("embed", "mlp"), name="up_proj", **kw)(x), ACT_MLP)
        hidden = constrain(nn.silu(gate) * up, ACT_MLP)
        return constrain(dense(cfg.hidden_size, ("mlp", "embed"), name="down_proj", **kw)(hidden), ACT)


class DecoderLayer(nn.Module):
    """Pre-norm Llama block: `x += attn(norm(x)); x += mlp(norm(x))`."""

    config: LlamaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = constrain(x, ACT)
        h = RMSNorm(cfg.rms_norm_eps, name="input_layernorm", **kw)(x)
        attn, new_cache = Attention(cfg, name="self_attn", **kw)(h, cos, sin, mask, cache, cache_index)
        x = constrain(x + attn, ACT)
        x = constrain(x + MLP(cfg, name="mlp", **kw)(RMSNorm(cfg.rms_norm_eps, name="post_attention_layernorm",
                                                             **kw)(x)), ACT)
        self.sow("intermediates", "output", x)
        return x, new_cache


class DecoderStack(nn.Module):
    """`num_layers` decoder layers (no final norm). Params under `layers` (scanned: stacked on a
    leading `layers` axis) or `layers_{i}`."""

    config: LlamaConfig
    num_layers: int
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, positions, mask, cache: Optional[Cache] = None, cache_index=None):
        """x `[B, T, D]`, positions int `[B, T]`, mask bool `[B, 1, T, S]`, cache stacked over layers or
        None. Returns `([B, T, D], new cache or None)`."""
        cfg = self.config
        inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        cos, sin = rope_angles(positions, inv_freq)
        return run_layers(DecoderLayer, dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype),
                          self.num_layers, x, (cos, sin, mask), (cache, cache_index if cache is None else
                                                                  _per_layer(cache_index, self.num_layers)),
                          scan=self.scan_layers, initializing=self.is_initializing(), remat=self.remat_policy)


def _per_layer(index, n):
    """Broadcasts a `[B]` cache index to `[n, B]` so it can be scanned alongside the cache."""
    return jnp.broadcast_to(index, (n,) + index.shape)


def causal_mask(key_valid: jnp.ndarray, num_queries: Optional[int] = None) -> jnp.ndarray:
    """`[B, 1, T, S]` bool: query t may attend key s iff s <= t (aligned at the start) and key_valid[b, s]."""
    s = key_valid.shape[1]
    t = s if num_queries is None else num_queries
    causal = jnp.arange(t)[:, None] >= jnp.arange(s)[None, :]
    return (causal[None, None] & key_valid[:, None, None, :].astype(bool))


class LlamaLM(nn.Module):
    """Token embedding, decoder stack, final norm and LM head. Logits are float32."""

    config: LlamaConfig
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
        self.decoder = DecoderStack(cfg, cfg.num_layers, self.scan_layers, self.remat_policy, self.dtype,
                                    self.param_dtype)
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = self.param(
                "lm_head", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab")),
                (cfg.hidden_size, cfg.vocab_size), self.param_dtype)

    def embed(self, ids: jnp.ndarray) -> jnp.ndarray:
        """Raw token embeddings `[B, L, D]` of `max(ids, 0)` (the placeholder -200 looks up row 0)."""
        return constrain(self.embed_tokens(jnp.maximum(ids, 0)), ACT)

    def head(self) -> jnp.ndarray:
        """The LM head `[D, V]` (the transposed token embedding when tied)."""
        return self.embed_tokens.embedding.T if self.config.tie_word_embeddings else self.lm_head

    def logits(self, h: jnp.ndarray) -> jnp.ndarray:
        """Final norm + LM head: `[B, T, D] -> [B, T, V]` float32 (float32 accumulation)."""
        h = self.norm(h)
        head = jnp.asarray(self.head(), self.dtype)  # (not `.astype`: a quantized head passes, see quantize.py)
        logits = jnp.einsum("btd,dv->btv", h, head, preferred_element_type=jnp.float32)
        return constrain(logits, ACT_VOCAB)

    def chunked_cross_entropy(self, h: jnp.ndarray, labels: jnp.ndarray, chunk: int):
        """Final norm, then the shifted CE of the LM head's logits `chunk` positions at a time (never
        `[B, T, V]` at once): h `[B, T, D]`, labels `[B, T]` -> `(CE sum [B], supervised count [B])`."""
        return chunked_cross_entropy(self.norm(h), self.head(), labels, chunk, self.dtype)

    def __call__(self, embeds, positions, mask, cache=None, cache_index=None):
        """embeds `[B, T, D]`, positions `[B, T]`, mask `[B, 1, T, S]` -> (logits `[B, T, V]` f32, cache)."""
        h, new_cache = self.decoder(embeds, positions, mask, cache, cache_index)
        return self.logits(h), new_cache
