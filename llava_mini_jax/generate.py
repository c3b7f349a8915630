"""KV-cache generation: prefill once with the fused sequence, then one jitted decode step per token.

    prompt ids + images ──splice──► [B, L'] embeds ──prefill──► cache slots 0..n_b-1, first token
    token t ──raw embedding──► decode_step at slot/position n_b + t - 1 ──► token t+1   (SPEC A §12)

Shapes are static: prompts are right-padded to a bucketed length (`bucket_length`), the cache holds
`L' + max_new_tokens` slots, so a new prompt length only compiles again when it crosses a bucket.
Each row writes its own cache slot and reads its own last real token, so batches of different
lengths are exact (library decision D5; the reference reads padding for short rows, SPEC Q9).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .config import LlavaMiniConfig
from .model import LlavaMini, validate_inputs
from .sharding import activation_sharding, mesh_of
from .splice import spliced_length


def bucket_length(n: int, minimum: int = 16) -> int:
    """Next power of two >= n (at least `minimum`), then multiples of 1024: bounds the compiles."""
    if n <= 1024:
        return max(minimum, 1 << max(0, (n - 1).bit_length()))
    return -(-n // 1024) * 1024


def init_kv_cache(config: LlavaMiniConfig, batch: int, size: int, dtype=jnp.float32) -> dict:
    """Zero KV cache `{"k","v"}: [layers, B, size, kv_heads, head_dim]` of `dtype`."""
    c = config.llm
    shape = (c.num_layers, batch, size, c.num_kv_heads, c.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


# -- sampling ---------------------------------------------------------------------------------------
def filter_top_k(logits: jnp.ndarray, k: int) -> jnp.ndarray:
    """Keeps logits >= the k-th largest (ties kept, as HF), others -inf. logits `[B, V]`."""
    k = min(int(k), logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def filter_top_p(logits: jnp.ndarray, p: float) -> jnp.ndarray:
    """Nucleus: keeps the smallest set of most likely tokens whose probability reaches p (at least
    one), others -inf. logits `[B, V]`."""
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    keep_sorted = before < p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits, -jnp.inf)


def next_token(logits: jnp.ndarray, rng, temperature: float, top_k: Optional[int], top_p: Optional[float]):
    """Greedy (`temperature == 0`) or sampled token per row: temperature, then top-k, then top-p (HF order)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = filter_top_p(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


# -- compiled pieces (cached per model) ---------------------------------------------------------------
def chunked_prefill(model: LlavaMini, params, embeds, mask, cache, chunk: int):
    """The LLM prefill in chunks of `chunk` tokens (a `lax.scan` filling the KV cache), so attention
    holds `chunk x S` scores instead of `S x S`: long videos fit. Same numbers as one pass. The cache
    needs `ceil(T / chunk) * chunk` slots at least. Returns `(logits at each row's last token [B, V], cache)`."""
    b, t, d = embeds.shape
    n = -(-t // chunk)
    size = cache["k"].shape[2]
    if n * chunk > size:
        raise ValueError(f"chunked prefill needs {n * chunk} cache slots, the cache has {size}")
    key_valid = jnp.zeros((b, size), bool).at[:, :t].set(mask)
    pieces = jnp.pad(embeds, [(0, 0), (0, n * chunk - t), (0, 0)]).reshape(b, n, chunk, d).swapaxes(0, 1)

    def body(cache, xs):
        piece, i = xs
        h, cache = model.apply({"params": params}, piece, key_valid, cache, i * chunk, method="prefill_chunk")
        return cache, h

    cache, hidden = jax.lax.scan(body, cache, (pieces, jnp.arange(n, dtype=jnp.int32)))
    hidden = hidden.swapaxes(0, 1).reshape(b, n * chunk, d)[:, :t]
    return model.apply({"params": params}, hidden, mask, method="last_token_logits"), cache


@functools.lru_cache(maxsize=32)
def _compiled(model: LlavaMini, temperature: float, top_k: Optional[int], top_p: Optional[float]):
    def prefill(params, input_ids, attention_mask, images, rng, cache_size, chunk):
        embeds, mask, _ = model.apply({"params": params}, input_ids, attention_mask, images, method="splice_inputs")
        cache = init_kv_cache(model.config, mask.shape[0], cache_size, model.dtype)
        if chunk is None or mask.shape[1] <= chunk:
            logits, cache = model.apply({"params": params}, embeds, mask, cache, method="prefill")
        else:
            logits, cache = chunked_prefill(model, params, embeds, mask, cache, chunk)
        token = next_token(logits, jax.random.fold_in(rng, 0), temperature, top_k, top_p)
        return token, mask.sum(axis=1).astype(jnp.int32), cache

    def step(params, token, index, cache, rng, t):
        logits, cache = model.apply({"params": params}, token, index, cache, method="decode_step")
        return next_token(logits, jax.random.fold_in(rng, t), temperature, top_k, top_p), cache

    return (jax.jit(prefill, static_argnames=("cache_size", "chunk")),
            jax.jit(step, donate_argnums=(3,)))


def _as_key(rng):
    if rng is None:
        return jax.random.key(0)
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng))
    return rng


def _pad_columns(a: np.ndarray, width: int, value) -> np.ndarray:
    return np.pad(a, [(0, 0), (0, width - a.shape[1])], constant_values=value)


def generate(model: LlavaMini, params, input_ids, attention_mask=None, images=None, max_new_tokens: int = 32,
             temperature: float = 0.0, top_p: Optional[float] = None, top_k: Optional[int] = None,
             eos_token_ids: Optional[Sequence[int]] = None, pad_token_id: Optional[int] = None, rng=None,
             stream: Optional[Callable[[np.ndarray], None]] = None, prefill_chunk: Optional[int] = 2048) -> np.ndarray:
    """Generates `[B, max_new_tokens]` int32 new tokens (prompt not included).

    - `input_ids [B, L]` right-padded (at most one -200 per row), `attention_mask [B, L]` (default:
      all real), `images` as for the model call (`[B, P, 3, H, W]`, `[B, T, P, 3, H, W]` or None).
    - `temperature == 0`: greedy; otherwise sampling with optional `top_k`, then `top_p`.
    - `eos_token_ids`: a row that emits one of them gets `pad_token_id` afterwards (the EOS itself
      is kept); generation stops early when every row has finished. None reads the checkpoint's
      generation settings (`model.generation`, a `GenerationConfig` that keys no compile).
      `pad_token_id` None -> `model.generation.pad_token_id`, else 0.
    - `rng`: a `jax.random` key or an int seed (same seed, same samples).
    - `stream(tokens)`: called after every step with that step's `[B]` tokens (numpy).
    - `prefill_chunk`: spliced prompts longer than this prefill in chunks (attention memory `chunk
      x S` instead of `S x S`, e.g. for thousands of video frames); None: always one pass.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: expected >= 0")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k}: expected >= 1")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}: expected 0 < top_p <= 1")
    cfg, gen = model.config, model.generation
    eos = tuple(gen.eos_token_ids if eos_token_ids is None else eos_token_ids)
    if pad_token_id is None:
        pad_token_id = gen.pad_token_id if gen.pad_token_id is not None else 0

    ids = np.asarray(input_ids).astype(np.int32)
    if ids.ndim == 1:
        ids = ids[None]
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask).astype(np.int32)
    validate_inputs(ids, mask, images)
    b, seq_len = ids.shape
    width = bucket_length(seq_len)
    ids, mask = _pad_columns(ids, width, 0), _pad_columns(mask, width, 0)
    tokens_per_row = 0 if images is None else _vision_tokens(cfg, images)
    prompt_len = width if images is None else spliced_length(width, tokens_per_row, cfg.max_length)
    cache_size = prompt_len + max_new_tokens
    if prefill_chunk is not None and prompt_len > prefill_chunk:
        cache_size = max(cache_size, -(-prompt_len // prefill_chunk) * prefill_chunk)

    prefill, step = _compiled(model, float(temperature), top_k, top_p)
    key = _as_key(rng)
    mesh = mesh_of(params)  # params sharded over a mesh: activations follow the logical rules too
    with activation_sharding(mesh):
        token, lengths, cache = prefill(params, jnp.asarray(ids), jnp.asarray(mask),
                                        None if images is None else jnp.asarray(images, jnp.float32), key,
                                        cache_size=cache_size, chunk=prefill_chunk)
    out = np.full((b, max_new_tokens), pad_token_id, np.int32)
    done = np.zeros(b, bool)
    eos_arr = np.asarray(eos, np.int32)
    for t in range(max_new_tokens):
        if t:
            with activation_sharding(mesh):
                token, cache = step(params, token, lengths + (t - 1), cache, key, t)
        host = np.asarray(token)
        host = np.where(done, pad_token_id, host)
        out[:, t] = host
        if stream is not None:
            stream(host.copy())
        done |= np.isin(host, eos_arr)
        if done.all():
            break
    return out


def _vision_tokens(cfg: LlavaMiniConfig, images) -> int:
    """Tokens spliced per row: Q*T (LLaVA-Mini) or T*P*N(+1) patches (baseline)."""
    shape = tuple(np.shape(images))
    frames = shape[1] if len(shape) == 6 else 1
    if cfg.is_mini:
        return cfg.tokens_per_frame * frames
    parts = shape[-4] if len(shape) >= 5 else 1
    return cfg.tokens_per_frame * parts * frames
