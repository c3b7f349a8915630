"""Token-level causal-LM cross-entropy in float32: from logits, or from hidden states in chunks.

`chunked_cross_entropy` never holds the `[B, L, V]` logits: it applies the LM head to `chunk`
positions at a time inside a `lax.scan`, under `jax.checkpoint`, so the forward keeps only the
hidden states and the backward recomputes one chunk's logits at a time (`[B, chunk, V]` float32,
vocabulary sharded by the `activation_vocab` rule).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import IGNORE_INDEX
from .layers import constrain

ACT_VOCAB = ("activation_batch", "activation_length", "activation_vocab")


def shifted_targets(labels: jnp.ndarray) -> jnp.ndarray:
    """`[B, L]` targets: position t predicts label t+1; the last position predicts nothing (-100)."""
    return jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE_INDEX)], axis=1)


def _target_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`(CE sum [B], target count [B])` of logits `[B, T, V]` (float32) against targets `[B, T]`."""
    valid = targets != IGNORE_INDEX
    safe = jnp.where(valid, targets, 0)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    ce = jnp.where(valid, logz - picked, 0.0)
    return ce.sum(axis=1), valid.sum(axis=1).astype(jnp.float32)


def token_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Shifted CE: position t predicts label t+1. logits `[B, L, V]`, labels `[B, L]` (-100 ignored).

    Returns `(sum of CE over supervised tokens, number of supervised tokens)`, both float32 scalars.
    """
    ce, count = _target_cross_entropy(logits[:, :-1].astype(jnp.float32), labels[:, 1:])
    return ce.sum(), count.sum()


def mean_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`(mean CE over supervised tokens, count)`. With no supervised token the loss is 0 and the
    count 0 (library decision D9; the reference returns NaN)."""
    total, count = token_cross_entropy(logits, labels)
    return total / jnp.maximum(count, 1.0), count


def chunked_cross_entropy(hidden: jnp.ndarray, head: jnp.ndarray, labels: jnp.ndarray, chunk: int,
                          dtype=jnp.float32) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Shifted CE per row from the final (normed) hidden states, `chunk` positions at a time.

    hidden `[B, L, D]`, head `[D, V]` (the LM head; cast to `dtype`, float32 accumulation as
    `LlamaLM.logits`), labels `[B, L]` (-100 ignored). Returns `(CE sum [B], supervised count [B])`
    float32, equal to `token_cross_entropy` on the full logits row by row. The sequence is padded to
    a multiple of `chunk` with ignored targets; `chunk >= L` is one chunk.
    """
    if chunk <= 0:
        raise ValueError(f"cross-entropy chunk size {chunk}: expected > 0")
    b, length, d = hidden.shape
    chunk = min(chunk, length)
    n = -(-length // chunk)
    pad = n * chunk - length
    targets = shifted_targets(labels)
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
    hidden = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)  # [n, B, c, D]
    targets = targets.reshape(b, n, chunk).swapaxes(0, 1)  # [n, B, c]
    head = jnp.asarray(head, dtype)  # (not `.astype`: a quantized head passes, see quantize.py)

    @jax.checkpoint
    def one_chunk(h, t, w):
        logits = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
        return _target_cross_entropy(constrain(logits, ACT_VOCAB), t)

    def body(carry, xs):
        ce, count = one_chunk(*xs, head)
        return (carry[0] + ce, carry[1] + count), None

    zeros = jnp.zeros((b,), jnp.float32)
    (ce, count), _ = jax.lax.scan(body, (zeros, zeros), (hidden.astype(dtype), targets))
    return ce, count
