"""Masks and positions of the modality pre-fusion (SPEC A §5), as pure functions.

The pre-fusion sequence of one frame is `[image tokens (I of them) | text (L)]`:

    standard:  [ G: projected global view (N) | c: compressed (Q) | text (L) ]
    HD:        [ Tp: projected tiles, stitched (r*r*N) | G (N) | c (Q) | text (L) ]

Text positions whose (possibly answer-zeroed) id is <= 0 are masked as keys (pads, the -200
placeholder, supervised answers in a labelled forward) and later take their raw embedding.
"""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from .config import IGNORE_INDEX


def text_key_mask(input_ids: jnp.ndarray, labels: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """`[B, L]` bool, True = masked text key. With labels, supervised answer ids are zeroed first
    (SPEC Q4, kept: training and generation agree), so answers are masked too. Not attention_mask
    based (SPEC Q3)."""
    ids = input_ids
    if labels is not None:
        ids = jnp.where(labels == IGNORE_INDEX, input_ids, 0)
    return ids <= 0


def prefusion_positions(num_image_tokens: int, text_mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`(positions [B, S], key_mask [B, S])` with S = I + L: image tokens get 0..I-1, unmasked text
    continues from I skipping masked tokens, masked positions get 1 (unobservable, SPEC Q13)."""
    b = text_mask.shape[0]
    key_mask = jnp.concatenate([jnp.zeros((b, num_image_tokens), bool), text_mask], axis=1)
    positions = jnp.cumsum(~key_mask, axis=1) - 1
    return jnp.where(key_mask, 1, positions).astype(jnp.int32), key_mask


def prefusion_attention(key_mask: jnp.ndarray) -> jnp.ndarray:
    """`[B, 1, S, S]` bool: query i attends key j iff j <= i and key j unmasked. No row is empty
    because image tokens come first."""
    s = key_mask.shape[1]
    causal = jnp.arange(s)[:, None] >= jnp.arange(s)[None, :]
    return causal[None, None] & ~key_mask[:, None, None, :]


def stitch_tiles(tiles: jnp.ndarray, r: int) -> jnp.ndarray:
    """HD tiles `[n, r*r, g*g, C]` (tile order ti*r+tj, patches row-major) -> one `[n, (r*g)^2, C]`
    grid, row-major: `big[ti*g + pi, tj*g + pj] = tiles[ti*r + tj, pi*g + pj]`."""
    n, _, k, c = tiles.shape
    g = int(round(k ** 0.5))
    x = tiles.reshape(n, r, r, g, g, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, r * g * r * g, c)
