"""prefusion.py on hand-worked masks, positions, attention patterns and the HD tile stitching (SPEC A §5).
All comparisons exact (integer / boolean outputs, pure reshapes)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llava_mini_jax.prefusion import prefusion_attention, prefusion_positions, stitch_tiles, text_key_mask

IMG, IGN = -200, -100


@jax.jit
def _all(num_image_holder, input_ids, labels):
    """Everything for one batch, jitted once (eager dispatch compiles op by op)."""
    i = num_image_holder.shape[0]
    plain, lab = text_key_mask(input_ids), text_key_mask(input_ids, labels)
    pos, key_mask = prefusion_positions(i, plain)
    lab_pos, lab_key_mask = prefusion_positions(i, lab)
    return plain, lab, pos, key_mask, lab_pos, lab_key_mask, prefusion_attention(key_mask)


IDS = np.array([[1, IMG, 7, 8, 9, 0],  # placeholder, answer 8 9 (labelled), pad
                [5, 6, 0, 4, 0, 0]])  # a genuine id 0 inside the text is masked too (SPEC Q3)
LABELS = np.array([[IGN, IGN, IGN, 8, 9, IGN],
                   [IGN, 6, IGN, IGN, IGN, IGN]])


def test_text_key_mask_with_and_without_labels():
    plain, lab, *_ = _all(jnp.zeros(2), IDS, LABELS)
    np.testing.assert_array_equal(plain, [[0, 1, 0, 0, 0, 1], [0, 0, 1, 0, 1, 1]])
    # labelled: supervised answer ids are zeroed first, so they are masked too (SPEC Q4)
    np.testing.assert_array_equal(lab, [[0, 1, 0, 1, 1, 1], [0, 1, 1, 0, 1, 1]])


def test_positions_and_key_mask_with_two_image_tokens():
    _, _, pos, key_mask, lab_pos, lab_key_mask, _ = _all(jnp.zeros(2), IDS, LABELS)
    # image tokens 0, 1; unmasked text continues at 2 skipping masked tokens; masked tokens get 1 (SPEC Q13)
    np.testing.assert_array_equal(key_mask, [[0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0, 1, 1]])
    np.testing.assert_array_equal(pos, [[0, 1, 2, 1, 3, 4, 5, 1], [0, 1, 2, 3, 1, 4, 1, 1]])
    np.testing.assert_array_equal(lab_pos, [[0, 1, 2, 1, 3, 1, 1, 1], [0, 1, 2, 1, 1, 3, 1, 1]])
    assert lab_key_mask.shape == (2, 8) and pos.dtype == jnp.int32


def test_attention_is_causal_over_unmasked_keys():
    *_, allowed = _all(jnp.zeros(2), IDS, LABELS)
    allowed = np.asarray(allowed)
    assert allowed.shape == (2, 1, 8, 8)
    key_ok = np.array([[1, 1, 1, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 1, 0, 0]], bool)
    for b in range(2):
        want = np.tril(np.ones((8, 8), bool)) & key_ok[b][None, :]
        np.testing.assert_array_equal(allowed[b, 0], want)
    assert allowed[:, 0].any(-1).all()  # no empty row: image tokens come first
    # row 0, query 5 (text id 8) sees image tokens, BOS and 7, not the placeholder at key 3
    np.testing.assert_array_equal(allowed[0, 0, 5], [1, 1, 1, 0, 1, 1, 0, 0])


def test_stitch_tiles_hand_layout():
    """r = 2 tiles per side of g = 2 patches: big[ti*g + pi, tj*g + pj] = tiles[ti*r + tj, pi*g + pj]."""
    r, g = 2, 2
    tiles = np.zeros((1, r * r, g * g, 1), np.float32)
    for t in range(r * r):
        for p in range(g * g):
            tiles[0, t, p, 0] = 10 * t + p  # tile t, patch p
    big = np.asarray(stitch_tiles(jnp.asarray(tiles), r))[0, :, 0].reshape(r * g, r * g)
    np.testing.assert_array_equal(big, [[0, 1, 10, 11],
                                        [2, 3, 12, 13],
                                        [20, 21, 30, 31],
                                        [22, 23, 32, 33]])


def test_stitch_tiles_general_rule():
    rng = np.random.default_rng(0)
    n, r, g, c = 2, 3, 2, 5
    tiles = rng.standard_normal((n, r * r, g * g, c)).astype(np.float32)
    big = np.asarray(stitch_tiles(jnp.asarray(tiles), r)).reshape(n, r * g, r * g, c)
    for ti in range(r):
        for tj in range(r):
            for pi in range(g):
                for pj in range(g):
                    np.testing.assert_array_equal(big[:, ti * g + pi, tj * g + pj], tiles[:, ti * r + tj, pi * g + pj])
