"""Llama decoder: attention (MHA/GQA, RoPE), SiLU-gated MLP, layer, stack, and the causal LM.

The same `DecoderStack` serves the LLM and the pre-fusion layers (which have no final norm).
The KV cache is explicit and functional: a dict `{"k", "v"}` of `[layers, B, S, kv_heads, head_dim]`
arrays passed in and returned. It is carried through the layer loop (not scanned over), and each
layer writes its new keys and values into its own slice with one `dynamic_update_slice` (a scatter
when rows write at their own offsets), so XLA updates the donated cache in place instead of
building a second one.

What each query attends is an `AttentionMask`: causality and per-row lengths (what fused attention
kernels such as cuDNN's flash attention take) wherever that is exact, a dense `[B, 1, T, S]` mask
only where the model needs one (pre-fusion, later chunks of a chunked prefill).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

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
CACHE = (None, "activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")  # [layers, B, S, KV, hd]


ATTENTION_IMPLS = ("xla", "cudnn", "auto")


@struct.dataclass
class AttentionMask:
    """Which keys each query attends, in the forms fused attention kernels accept.

    - `is_causal`: query t sees keys s <= t (queries and keys aligned at their first position);
    - `query_lengths [B]`: queries t >= length are padding (their output is zero);
    - `key_lengths [B]`: keys s >= length are padding;
    - `dense [B, 1, T, S]` bool (True = may attend): an explicit mask, where the forms above cannot
      say it (pre-fusion, a chunk of a chunked prefill);
    - `over_cache` (with a KV cache): the keys are the cache's S slots after this call's writes;
      otherwise they are this call's own T tokens (a prefill that starts at slot 0 reads nothing back).
    """

    dense: Optional[jnp.ndarray] = None
    query_lengths: Optional[jnp.ndarray] = None
    key_lengths: Optional[jnp.ndarray] = None
    is_causal: bool = struct.field(pytree_node=False, default=False)
    over_cache: bool = struct.field(pytree_node=False, default=True)


MaskLike = Union[AttentionMask, jnp.ndarray]


def as_attention_mask(mask: MaskLike) -> AttentionMask:
    """A dense bool `[B, 1, T, S]` array becomes `AttentionMask(dense=mask)`; an `AttentionMask` is kept."""
    return mask if isinstance(mask, AttentionMask) else AttentionMask(dense=mask)


def causal_by_lengths(lengths: jnp.ndarray) -> AttentionMask:
    """Right-padded rows of `lengths [B]` real tokens, causal: exactly `causal_mask(valid)` on the real
    queries (padded queries give zeros instead of attending), with no `[B, 1, T, T]` array."""
    lengths = lengths.astype(jnp.int32)
    return AttentionMask(query_lengths=lengths, key_lengths=lengths, is_causal=True, over_cache=False)


def resolve_attention_impl(impl: str, dtype, head_dim: int, mask: AttentionMask, num_queries: int) -> str:
    """`xla` or `cudnn` for one attention call. `auto` picks cuDNN's fused flash attention on a GPU
    where it applies (bf16/fp16, head_dim a multiple of 8 up to 128, no dense mask, more than one
    query) and XLA otherwise (CPU, float32, decode steps, dense masks)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={impl!r}: expected one of {ATTENTION_IMPLS}")
    if impl != "auto":
        return impl
    fits = (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
            and head_dim % 8 == 0 and head_dim <= 128 and mask.dense is None and num_queries > 1)
    return "cudnn" if fits else "xla"


def attend(q, k, v, mask: AttentionMask, scale: float, impl: str = "xla") -> jnp.ndarray:
    """`jax.nn.dot_product_attention` of q `[B, T, H, hd]` over k, v `[B, S, KV, hd]` under `mask`."""
    impl = resolve_attention_impl(impl, q.dtype, q.shape[-1], mask, q.shape[1])
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask.dense, scale=scale, is_causal=mask.is_causal, query_seq_lengths=mask.query_lengths,
        key_value_seq_lengths=mask.key_lengths, implementation=impl)


def write_cache(cache: jnp.ndarray, update: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """Writes `update [B, T, ...]` into `cache [B, S, ...]` at rows' own offsets `index [B]`."""
    def one(c, u, i):
        return jax.lax.dynamic_update_slice_in_dim(c, u.astype(c.dtype), i, axis=0)
    return jax.vmap(one)(cache, update, index)


def write_layer(cache: jnp.ndarray, update: jnp.ndarray, layer, index) -> jnp.ndarray:
    """Writes `update [B, T, KV, hd]` into layer `layer` of the stacked `cache [layers, B, S, KV, hd]`
    at slot `index` (a scalar, or `[1]`: one `dynamic_update_slice`) or `index [B]` (each row at its
    own slot, one scatter). Both update a donated / carried cache in place (the single-row case as a
    slice also on XLA:CPU, which computes a bfloat16 scatter in float32 into a second cache)."""
    update = update.astype(cache.dtype)
    index = jnp.asarray(index, jnp.int32)
    if index.ndim == 0 or index.shape[0] == 1:
        return jax.lax.dynamic_update_slice(cache, update[None], (layer, 0, index.reshape(()), 0, 0))
    b, t = update.shape[:2]
    rows = jnp.arange(b)[:, None]
    slots = index[:, None] + jnp.arange(t)[None, :]
    return cache.at[layer, rows, slots].set(update, mode="drop")  # a slot past the cache is dropped, never clamped


def read_layer(cache: jnp.ndarray, layer) -> jnp.ndarray:
    """Layer `layer` of the stacked cache: `[B, S, KV, hd]`."""
    return jax.lax.dynamic_index_in_dim(cache, layer, axis=0, keepdims=False)


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention with rotary embeddings and no biases."""

    config: LlamaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x, cos, sin, mask: MaskLike, cache: Optional[Cache] = None, layer=None, cache_index=None):
        """x `[B, T, D]`; cos/sin `[B, T, hd]`; `mask` an `AttentionMask` or a dense bool `[B, 1, T, S]`.
        With a `cache` (`{"k","v"}: [layers, B, S, KV, hd]`), this layer's keys and values are written
        into slice `layer` at `cache_index` (scalar or `[B]`); the attended keys are then the S cache
        slots (`mask.over_cache`) or this call's T tokens. Returns `([B, T, D], cache or None)`."""
        cfg = self.config
        mask = as_attention_mask(mask)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = dense((cfg.num_heads, cfg.head_dim), ("embed", "heads", "head_dim"), name="q_proj", **kw)(x)
        k = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), name="k_proj", **kw)(x)
        v = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), name="v_proj", **kw)(x)
        q = constrain(apply_rope(q, cos, sin), ACT_HEADS)
        k, v = constrain(apply_rope(k, cos, sin), ACT_KV), constrain(v, ACT_KV)
        if cache is not None:
            cache = {"k": constrain(write_layer(cache["k"], k, layer, cache_index), CACHE),
                     "v": constrain(write_layer(cache["v"], v, layer, cache_index), CACHE)}
            if mask.over_cache:
                k = constrain(read_layer(cache["k"], layer), ACT_KV).astype(self.dtype)
                v = constrain(read_layer(cache["v"], layer), ACT_KV).astype(self.dtype)
        out = constrain(attend(q, k, v, mask, cfg.head_dim ** -0.5, self.attention_impl), ACT_HEADS)
        out = dense(cfg.hidden_size, ("heads", "head_dim", "embed"), axis=(-2, -1), name="o_proj", **kw)(out)
        return constrain(out, ACT), cache


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
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, carry, cos, sin, mask: MaskLike, cache_index=None):
        """carry: x `[B, T, D]`, or `(x, cache, layer)` when writing a KV cache (the cache stacked
        over layers, `layer` the int32 index of this layer in it). Returns `(carry, None)`."""
        x, cache, layer = carry if isinstance(carry, tuple) else (carry, None, None)
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = constrain(x, ACT)
        h = RMSNorm(cfg.rms_norm_eps, name="input_layernorm", **kw)(x)
        attn, cache = Attention(cfg, name="self_attn", attention_impl=self.attention_impl, **kw)(
            h, cos, sin, mask, cache, layer, cache_index)
        x = constrain(x + attn, ACT)
        x = constrain(x + MLP(cfg, name="mlp", **kw)(RMSNorm(cfg.rms_norm_eps, name="post_attention_layernorm",
                                                             **kw)(x)), ACT)
        self.sow("intermediates", "output", x)
        return (x if cache is None else (x, cache, layer + 1)), None


class DecoderStack(nn.Module):
    """`num_layers` decoder layers (no final norm). Params under `layers` (scanned: stacked on a
    leading `layers` axis) or `layers_{i}`."""

    config: LlamaConfig
    num_layers: int
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x, positions, mask: MaskLike, cache: Optional[Cache] = None, cache_index=None):
        """x `[B, T, D]`, positions int `[B, T]`, mask an `AttentionMask` or bool `[B, 1, T, S]`, cache
        stacked over layers (carried through the layers, each writing its slice at `cache_index`, a
        scalar or `[B]`) or None. Returns `([B, T, D], new cache or None)`."""
        cfg = self.config
        inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        cos, sin = rope_angles(positions, inv_freq)
        kwargs = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype, attention_impl=self.attention_impl)
        if cache is None:
            x, _ = run_layers(DecoderLayer, kwargs, self.num_layers, x, (cos, sin, mask), (),
                              scan=self.scan_layers, initializing=self.is_initializing(), remat=self.remat_policy)
            return x, None
        carry = (x, cache, jnp.zeros((), jnp.int32))
        (x, cache, _), _ = run_layers(DecoderLayer, kwargs, self.num_layers, carry, (cos, sin, mask, cache_index), (),
                                      scan=self.scan_layers, initializing=self.is_initializing(),
                                      remat=self.remat_policy)
        return x, cache


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
    attention_impl: str = "xla"

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
        self.decoder = DecoderStack(cfg, cfg.num_layers, self.scan_layers, self.remat_policy, self.dtype,
                                    self.param_dtype, self.attention_impl)
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
        logits = jnp.einsum("btd,dv->btv", h, self.head().astype(self.dtype), preferred_element_type=jnp.float32)
        return constrain(logits, ACT_VOCAB)

    def chunked_cross_entropy(self, h: jnp.ndarray, labels: jnp.ndarray, chunk: int):
        """Final norm, then the shifted CE of the LM head's logits `chunk` positions at a time (never
        `[B, T, V]` at once): h `[B, T, D]`, labels `[B, T]` -> `(CE sum [B], supervised count [B])`."""
        return chunked_cross_entropy(self.norm(h), self.head(), labels, chunk, self.dtype)

    def __call__(self, embeds, positions, mask, cache=None, cache_index=None):
        """embeds `[B, T, D]`, positions `[B, T]`, mask (`AttentionMask` or `[B, 1, T, S]`) -> (logits
        `[B, T, V]` f32, cache)."""
        h, new_cache = self.decoder(embeds, positions, mask, cache, cache_index)
        return self.logits(h), new_cache
