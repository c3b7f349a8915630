"""interpolate.py against `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` and hand values.

Tolerance: atol = rtol = 1e-6 (float32; values are O(1). We sum the weights of clamped taps before
multiplying, torch sums the products, so results differ in the last ulp).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llava_mini_jax.interpolate import bicubic_matrix, resize_grid_bicubic

SIZES = [(1, 4), (2, 8), (3, 5), (4, 2), (5, 3), (2, 3), (3, 24), (8, 3), (6, 6)]


def _torch_matrix(n_in, n_out):
    """torch's bicubic resize of the n_in one-hot signals along H (W = 1): its `[out, in]` weights."""
    eye = torch.eye(n_in, dtype=torch.float32).reshape(1, n_in, n_in, 1)  # channel c = one-hot at row c
    out = F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=False)  # [1, in, out, 1]
    return out[0, :, :, 0].T.numpy()


@pytest.mark.parametrize("n_in,n_out", SIZES)
def test_bicubic_matrix_matches_torch(n_in, n_out):
    m = bicubic_matrix(n_in, n_out)
    assert m.shape == (n_out, n_in) and m.dtype == np.float32
    np.testing.assert_allclose(m, _torch_matrix(n_in, n_out), atol=1e-6, rtol=0)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)  # cubic-convolution weights sum to 1


@pytest.mark.parametrize("n_in,n_out", SIZES)
def test_resize_grid_matches_torch(n_in, n_out):
    rng = np.random.default_rng(n_in * 100 + n_out)
    grid = rng.standard_normal((n_in, n_in, 5)).astype(np.float32)
    ours = np.asarray(resize_grid_bicubic(jnp.asarray(grid), n_out))
    t = torch.from_numpy(grid).permute(2, 0, 1)[None]  # a 5-channel image
    want = F.interpolate(t, size=(n_out, n_out), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    assert ours.shape == (n_out, n_out, 5)
    np.testing.assert_allclose(ours, want, atol=1e-6, rtol=1e-6)


def test_differs_from_bilinear_and_align_corners():
    """The comparison has power: the near-miss resizes are far outside the tolerance."""
    m = bicubic_matrix(3, 5)
    eye = torch.eye(3).reshape(1, 3, 3, 1)
    for kw in (dict(mode="bicubic", align_corners=True), dict(mode="bilinear", align_corners=False)):
        other = F.interpolate(eye, size=(5, 1), **kw)[0, :, :, 0].T.numpy()
        assert np.abs(m - other).max() > 1e-2, kw


def test_hand_worked_2_to_4():
    """Row 0 of 2 -> 4: src = 0.5 * 0.5 - 0.5 = -0.25, i0 = -1, t = 0.75; taps -2, -1, 0, 1 clamp to 0, 0, 0, 1.
    A = -0.75: w(-1) = far(1.75) = -0.03515625, w(0) = near(0.75) = 0.26171875, w(1) = near(0.25) = 0.87890625,
    w(2) = far(1.25) = -0.10546875, so the row is [-0.035.. + 0.261.. + 0.878.., -0.105..]."""
    m = bicubic_matrix(2, 4)
    np.testing.assert_allclose(m[0], [1.10546875, -0.10546875], atol=1e-7)
    np.testing.assert_allclose(m[3], [-0.10546875, 1.10546875], atol=1e-7)  # mirror image
    # row 1: src = 1.5 * 0.5 - 0.5 = 0.25, i0 = 0, t = 0.25, taps -1, 0, 1, 2 -> 0, 0, 1, 1
    near = lambda x: (1.25 * x - 2.25) * x * x + 1  # noqa: E731
    far = lambda x: ((-0.75 * x + 3.75) * x - 6) * x + 3  # noqa: E731
    np.testing.assert_allclose(m[1], [far(1.25) + near(0.25), near(0.75) + far(1.75)], atol=1e-7)


def test_one_to_many_copies_and_same_size_is_identity():
    np.testing.assert_allclose(bicubic_matrix(1, 4), np.ones((4, 1), np.float32), atol=1e-6, rtol=0)
    np.testing.assert_allclose(bicubic_matrix(4, 4), np.eye(4), atol=1e-7)
    grid = jnp.arange(2 * 2 * 3, dtype=jnp.float32).reshape(2, 2, 3)
    assert resize_grid_bicubic(grid, 2) is grid
    one = jnp.asarray(np.array([[[1.0, -2.0]]], np.float32))
    np.testing.assert_allclose(np.asarray(resize_grid_bicubic(one, 3)), np.tile([[[1.0, -2.0]]], (3, 3, 1)),
                               atol=1e-6, rtol=1e-6)
