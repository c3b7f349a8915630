"""Memory order that makes the transposes of `hf_weights`' transforms cheap.

Most HF <-> JAX transforms transpose a matrix (`[out, in]` <-> `[in, out]`, with the head axes
split off by reshapes), which numpy does as one strided copy (~0.15 GB/s for float16 here). This
module hands a rule an array with *the same values* in the memory order in which the rule's own
transpose is a view, doing the transpose itself in row blocks (~1-2 GB/s). Values never change,
so a guess that does not fit a rule only costs time, never correctness.

The guess: a single 2-D HF tensor whose param has a different shape that the transposed matrix,
reshaped, gives (`[H*hd, D]` <-> `[D, H, hd]`, `[out, in]` <-> `[in, out]`). A param of the same
shape as its HF tensor is taken as a plain copy.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

BLOCK_ROWS = 16  # rows per block: fastest on the measured shapes (float16/float32, 1k-32k rows)


def transposed(a: np.ndarray) -> np.ndarray:
    """`a.T` of a 2-D array as a new C-contiguous array, copied in row blocks."""
    out = np.empty(a.shape[::-1], a.dtype)
    for i in range(0, a.shape[0], BLOCK_ROWS):
        out[:, i:i + BLOCK_ROWS] = a[i:i + BLOCK_ROWS].T
    return out


def _split(shape: tuple, rows: int, cols: int) -> Optional[int]:
    """k with prod(shape[:k]) == rows and prod(shape[k:]) == cols (0 < k < len(shape)), or None."""
    for k in range(1, len(shape)):
        if int(np.prod(shape[:k])) == rows and int(np.prod(shape[k:])) == cols:
            return k
    return None


def _transposes(hf_shape: tuple, leaf_shape: tuple) -> bool:
    """True when `leaf_shape` is taken to hold the transposed HF matrix (see the module doc)."""
    return (len(hf_shape) == 2 and tuple(leaf_shape) != tuple(hf_shape) and min(hf_shape) > 1
            and _split(tuple(leaf_shape), hf_shape[1], hf_shape[0]) is not None)


def for_to_jax(a: np.ndarray, leaf_shape: tuple) -> np.ndarray:
    """HF tensor `a` (same values), Fortran-ordered when its rule transposes it, so the rule's
    `ascontiguousarray(a.T)` is free."""
    if not a.flags.c_contiguous or not _transposes(a.shape, leaf_shape):
        return a
    return transposed(a).T


def for_to_hf(leaf: np.ndarray, hf_shape: tuple) -> np.ndarray:
    """Param `leaf` (same values) as a view of the C-contiguous HF matrix, so the rule's
    reshape + transpose + `ascontiguousarray` are all views."""
    if not leaf.flags.c_contiguous or not _transposes(tuple(hf_shape), leaf.shape):
        return leaf
    h0, h1 = hf_shape
    return transposed(leaf.reshape(h1, h0)).T.reshape(leaf.shape)
