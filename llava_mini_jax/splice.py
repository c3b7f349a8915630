"""Splice the vision tokens into the text at each row's placeholder, with static shapes.

For a row with its placeholder (-200) at position p, M vision tokens and `len` real tokens
(right-padded input, at most one placeholder per row):

    text:    t0 t1 .. t(p-1) [-200] t(p+1) .. t(len-1) pad pad
    output:  t0 t1 .. t(p-1) v0 v1 .. v(M-1) t(p+1) .. t(len-1) 0 0 ..      (n = len - 1 + M real)

A row without a placeholder keeps its text (n = len) and its image slot is simply unused (SPEC
Q6: it was still consumed). Every row's real tokens come first, padding (zero vectors, label
-100, mask False) after. The static output length is `L' = L - 1 + M`, cut to `max_length` (the
reference's `tokenizer_model_max_length`), which also truncates rows (SPEC Q17).

`num_vision` (optional) says how many of the M vision tokens are real (a video padded to a bucket of
frames): only those are spliced, the text continues right after them, and the output keeps its
static length `L - 1 + M` (the unused room is padding).
"""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from .config import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def spliced_length(seq_len: int, num_vision_tokens: int, max_length: Optional[int] = None) -> int:
    """The static `L' = L - 1 + M`, capped at `max_length`."""
    n = seq_len - 1 + num_vision_tokens
    return n if max_length is None else min(n, max_length)


def splice(text: jnp.ndarray, vision: jnp.ndarray, input_ids: jnp.ndarray, attention_mask: jnp.ndarray,
           labels: Optional[jnp.ndarray] = None, max_length: Optional[int] = None, num_vision=None):
    """text `[B, L, D]`, vision `[B, M, D]`, input_ids/attention_mask/labels `[B, L]`, num_vision int
    (scalar or `[B]`, <= M; None: all M) -> `(embeds [B, L', D], mask [B, L'] bool, labels [B, L'] with
    -100 on vision tokens and padding)`."""
    b, seq_len, _ = text.shape
    out_len = spliced_length(seq_len, vision.shape[1], max_length)
    count = vision.shape[1] if num_vision is None else jnp.broadcast_to(jnp.asarray(num_vision, jnp.int32), (b,))
    m = count if num_vision is None else count[:, None]  # broadcasts against positions [B, L']
    real = attention_mask.astype(bool)
    length = real.sum(axis=1)
    is_image = (input_ids == IMAGE_TOKEN_INDEX) & real
    has_image = is_image.any(axis=1)
    p = jnp.argmax(is_image, axis=1)
    n = jnp.where(has_image, length - 1 + count, length)
    if max_length is not None:
        n = jnp.minimum(n, max_length)

    j = jnp.arange(out_len)[None, :]
    p_, has_ = p[:, None], has_image[:, None]
    in_vision = has_ & (j >= p_) & (j < p_ + m)
    text_idx = jnp.where(has_ & (j >= p_ + m), j - m + 1, j)
    text_idx = jnp.clip(text_idx, 0, seq_len - 1)
    vision_idx = jnp.clip(j - p_, 0, vision.shape[1] - 1)
    valid = j < n[:, None]

    from_text = jnp.take_along_axis(text, text_idx[..., None], axis=1)
    from_vision = jnp.take_along_axis(vision.astype(text.dtype), vision_idx[..., None], axis=1)
    embeds = jnp.where(in_vision[..., None], from_vision, from_text)
    embeds = jnp.where(valid[..., None], embeds, 0).astype(text.dtype)
    if labels is None:
        labels = jnp.full((b, seq_len), IGNORE_INDEX, jnp.int32)
    out_labels = jnp.take_along_axis(labels, text_idx, axis=1)
    out_labels = jnp.where(in_vision | ~valid, IGNORE_INDEX, out_labels)
    return embeds, valid, out_labels
