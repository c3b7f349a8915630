"""Rotary position embeddings (rotate-half convention, as HF Llama), with `linear` and `llama3` scaling."""
from __future__ import annotations

import math
from typing import Optional

import jax.numpy as jnp
import numpy as np

from .config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: Optional[RopeScaling] = None) -> np.ndarray:
    """`inv_freq [head_dim // 2]` float32, after `rope_scaling` (SPEC A §8).

    `llama3` keeps high frequencies (wavelength < original/high_freq_factor), divides low ones
    (wavelength > original/low_freq_factor) by `factor`, and blends linearly in between.
    """
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv = inv.astype(np.float32)
    if scaling is None or scaling.rope_type == "default":
        return inv
    if scaling.rope_type == "linear":
        return (inv / np.float32(scaling.factor)).astype(np.float32)
    orig = scaling.original_max_position_embeddings
    low_wavelen = orig / scaling.low_freq_factor
    high_wavelen = orig / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (orig / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, blended, scaled).astype(np.float32)


def rope_angles(positions: jnp.ndarray, inv_freq: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`cos, sin [B, T, head_dim]` float32 for integer `positions [B, T]`."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotates `x [B, T, heads, head_dim]` by `cos/sin [B, T, head_dim]`: `x*cos + rot(x)*sin`,
    with `rot([a, b]) = [-b, a]` over the two halves of head_dim. Computed in float32."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
