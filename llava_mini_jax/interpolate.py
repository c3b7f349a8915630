"""PyTorch-compatible bicubic resize (`F.interpolate(mode="bicubic", align_corners=False)`).

Separable: each axis is a fixed `[out, in]` weight matrix built on the host, so the resize of a
`[C, C, d]` grid is two small matmuls. Per output index i: `src = (i + 0.5) * in/out - 0.5` (not
clamped), `i0 = floor(src)`, `t = src - i0`; taps `i0-1 .. i0+2` clamped to `[0, in-1]` with the
cubic-convolution weights for A = -0.75 (SPEC A §3).
"""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp

A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """`[n, 4]` weights of taps -1, 0, 1, 2 at fractional offset `t [n]`."""
    def near(x):  # |x| <= 1
        return ((A + 2) * x - (A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`[out_size, in_size]` float32 matrix M with `resized = M @ signal` along one axis."""
    scale = np.float32(in_size) / np.float32(out_size)
    i = np.arange(out_size, dtype=np.float32)
    src = (i + np.float32(0.5)) * scale - np.float32(0.5)
    i0 = np.floor(src)
    t = (src - i0).astype(np.float32)
    w = _cubic_weights(t).astype(np.float32)
    m = np.zeros((out_size, in_size), np.float32)
    for k in range(4):
        idx = np.clip(i0.astype(np.int64) - 1 + k, 0, in_size - 1)
        np.add.at(m, (np.arange(out_size), idx), w[:, k])
    return m


def resize_grid_bicubic(grid: jnp.ndarray, out_size: int) -> jnp.ndarray:
    """`[C, C, d] -> [out_size, out_size, d]`, as torch bicubic on a d-channel image, float32."""
    c = grid.shape[0]
    if out_size == c:
        return grid
    m = jnp.asarray(bicubic_matrix(c, out_size))
    g = grid.astype(jnp.float32)
    return jnp.einsum("yi,xj,ijd->yxd", m, m, g)
