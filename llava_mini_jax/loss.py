"""Token-level causal-LM cross-entropy in float32."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import IGNORE_INDEX


def token_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Shifted CE: position t predicts label t+1. logits `[B, L, V]`, labels `[B, L]` (-100 ignored).

    Returns `(sum of CE over supervised tokens, number of supervised tokens)`, both float32 scalars.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    safe = jnp.where(valid, targets, 0)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    ce = jnp.where(valid, logz - picked, 0.0)
    return ce.sum(), valid.sum().astype(jnp.float32)


def mean_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`(mean CE over supervised tokens, count)`. With no supervised token the loss is 0 and the
    count 0 (library decision D9; the reference returns NaN)."""
    total, count = token_cross_entropy(logits, labels)
    return total / jnp.maximum(count, 1.0), count
