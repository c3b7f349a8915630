"""splice.py on hand-worked rows and against a per-row Python loop written from SPEC A §7 (the reference's
strip / split at the placeholder / insert / truncate / right-pad). Exact comparisons (pure gathers)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llava_mini_jax.splice import splice, spliced_length

IMG, IGN = -200, -100
_splice = jax.jit(splice, static_argnums=5)  # eager op-by-op dispatch compiles far more on CPU


def _text(ids):
    """Text features that name their source: row b, position l -> [100 b + l + 1]."""
    b, n = ids.shape
    return (100 * np.arange(b)[:, None] + np.arange(n)[None, :] + 1).astype(np.float32)[..., None]


def _vision(b, m):
    """Vision token j of row b -> [-(1000 b + j + 1)]."""
    return -(1000 * np.arange(b)[:, None] + np.arange(m)[None, :] + 1).astype(np.float32)[..., None]


def _run(ids, mask, m, labels=None, max_length=None):
    ids, mask = np.asarray(ids), np.asarray(mask)
    emb, valid, lab = _splice(jnp.asarray(_text(ids)), jnp.asarray(_vision(len(ids), m)), jnp.asarray(ids),
                             jnp.asarray(mask), None if labels is None else jnp.asarray(labels), max_length)
    return np.asarray(emb)[..., 0], np.asarray(valid), np.asarray(lab)


def test_placeholder_first_mid_last_and_none():
    ids = [[IMG, 5, 6, 0, 0],  # placeholder at 0, two pads
           [1, 7, IMG, 8, 9],  # mid, no padding
           [1, 4, IMG, 0, 0],  # last real token
           [1, 2, 3, 0, 0]]  # no placeholder: text kept, the image slot unused (SPEC Q6)
    mask = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    emb, valid, lab = _run(ids, mask, m=2)
    assert emb.shape == (4, 6) == (4, spliced_length(5, 2))
    np.testing.assert_array_equal(emb, [[-1, -2, 2, 3, 0, 0],
                                        [101, 102, -1001, -1002, 104, 105],
                                        [201, 202, -2001, -2002, 0, 0],
                                        [301, 302, 303, 0, 0, 0]])
    np.testing.assert_array_equal(valid, [[1, 1, 1, 1, 0, 0], [1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    assert (lab == IGN).all()  # no labels given: everything ignored


def test_labels_follow_text_and_are_ignored_on_vision_and_padding():
    ids = [[1, IMG, 5, 6, 0], [1, 2, 3, 4, 5]]
    mask = [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    labels = [[IGN, IGN, 5, 6, 7], [IGN, 2, 3, IGN, 5]]  # row 0's label under padding must not leak
    emb, valid, lab = _run(ids, mask, m=3, labels=labels)
    np.testing.assert_array_equal(emb[0], [1, -1, -2, -3, 3, 4, 0])
    np.testing.assert_array_equal(lab, [[IGN, IGN, IGN, IGN, 5, 6, IGN],
                                        [IGN, 2, 3, IGN, 5, IGN, IGN]])
    np.testing.assert_array_equal(valid.sum(1), [6, 5])


def test_truncation_by_max_length_cuts_rows_and_labels():
    ids = [[1, 2, IMG, 3, 4], [1, IMG, 6, 0, 0]]
    mask = [[1] * 5, [1, 1, 1, 0, 0]]
    labels = [[IGN, IGN, IGN, 3, 4], [IGN, IGN, 6, IGN, IGN]]
    emb, valid, lab = _run(ids, mask, m=3, labels=labels, max_length=6)
    assert emb.shape == (2, 6) and spliced_length(5, 3, 6) == 6 and spliced_length(5, 3, 100) == 7
    np.testing.assert_array_equal(emb, [[1, 2, -1, -2, -3, 4], [101, -1001, -1002, -1003, 103, 0]])
    np.testing.assert_array_equal(lab, [[IGN, IGN, IGN, IGN, IGN, 3], [IGN, IGN, IGN, IGN, 6, IGN]])  # 4 cut (Q17)
    np.testing.assert_array_equal(valid, [[1] * 6, [1, 1, 1, 1, 1, 0]])


def test_placeholder_under_padding_is_ignored_and_single_token_prompt():
    emb, valid, _ = _run([[1, 2, IMG]], [[1, 1, 0]], m=2)  # masked -200 is padding, not an image
    np.testing.assert_array_equal(emb, [[1, 2, 0, 0]])
    np.testing.assert_array_equal(valid, [[1, 1, 0, 0]])
    emb, valid, _ = _run([[IMG]], [[1]], m=3)  # D8: the prompt [-200] alone
    np.testing.assert_array_equal(emb, [[-1, -2, -3]])
    assert valid.all()


def _reference(text, vision, ids, mask, labels, max_length):
    """SPEC A §7, one row at a time (right-padded input, at most one placeholder per row)."""
    rows = []
    for b in range(len(ids)):
        real = mask[b].astype(bool)
        r_ids, r_text, r_lab = ids[b][real], text[b][real], labels[b][real]
        where = np.nonzero(r_ids == IMG)[0]
        if where.size:
            p = where[0]
            emb = np.concatenate([r_text[:p], vision[b], r_text[p + 1:]])
            lab = np.concatenate([r_lab[:p], np.full(len(vision[b]), IGN), r_lab[p + 1:]])
        else:
            emb, lab = r_text, r_lab
        if max_length is not None:
            emb, lab = emb[:max_length], lab[:max_length]
        rows.append((emb, lab))
    width = ids.shape[1] - 1 + vision.shape[1]
    width = width if max_length is None else min(width, max_length)
    out = np.zeros((len(ids), width) + text.shape[2:], text.dtype)
    out_lab = np.full((len(ids), width), IGN)
    out_mask = np.zeros((len(ids), width), bool)
    for b, (emb, lab) in enumerate(rows):
        out[b, :len(emb)], out_lab[b, :len(lab)], out_mask[b, :len(emb)] = emb, lab, True
    return out, out_mask, out_lab


@pytest.mark.parametrize("max_length", [None, 9])
def test_random_batches_match_per_row_loop(max_length):
    rng = np.random.default_rng(0 if max_length is None else 1)
    b, n, m, d = 6, 8, 4, 3
    for _ in range(5):
        lengths = rng.integers(1, n + 1, b)
        mask = (np.arange(n)[None] < lengths[:, None]).astype(np.int32)
        ids = np.where(mask, rng.integers(1, 50, (b, n)), 0)
        for row in range(b):
            if rng.random() < 0.8:  # most rows have a placeholder, anywhere among the real tokens
                ids[row, rng.integers(0, lengths[row])] = IMG
        labels = np.where(rng.random((b, n)) < 0.5, ids, IGN)
        text = rng.standard_normal((b, n, d)).astype(np.float32)
        vision = rng.standard_normal((b, m, d)).astype(np.float32)
        got = _splice(jnp.asarray(text), jnp.asarray(vision), jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(labels),
                     max_length)
        for g, w, what in zip(got, _reference(text, vision, ids, mask, labels, max_length),
                              ("embeds", "mask", "labels")):
            np.testing.assert_array_equal(np.asarray(g), w, err_msg=what)


def test_dtype_kept():
    text = jnp.ones((1, 3, 2), jnp.bfloat16)
    emb, _, lab = _splice(text, jnp.ones((1, 2, 2), jnp.float32), jnp.array([[1, IMG, 2]]), jnp.ones((1, 3)), None,
                          None)
    assert emb.dtype == jnp.bfloat16 and emb.shape == (1, 4, 2) and lab.shape == (1, 4)


def test_num_vision_splices_only_the_real_tokens_of_a_padded_buffer():
    """A video padded to a bucket: 2 of the buffer's 4 vision tokens are real; the text follows them and
    the static length stays L - 1 + 4 (the unused room is padding)."""
    ids = np.array([[1, IMG, 5, 6], [IMG, 7, 0, 0], [1, 2, 3, 0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    labels = np.array([[IGN, IGN, 5, 6], [IGN, 7, IGN, IGN], [1, 2, 3, IGN]])
    emb, valid, lab = jax.jit(splice)(jnp.asarray(_text(ids)), jnp.asarray(_vision(3, 4)), jnp.asarray(ids),
                                      jnp.asarray(mask), jnp.asarray(labels), None, jnp.int32(2))
    emb = np.asarray(emb)[..., 0]
    assert emb.shape == (3, 7)
    np.testing.assert_array_equal(emb, [[1, -1, -2, 3, 4, 0, 0],
                                        [-1001, -1002, 102, 0, 0, 0, 0],
                                        [201, 202, 203, 0, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(valid).sum(1), [5, 3, 3])
    np.testing.assert_array_equal(np.asarray(lab), [[IGN, IGN, IGN, 5, 6, IGN, IGN],
                                                    [IGN, IGN, 7, IGN, IGN, IGN, IGN],
                                                    [1, 2, 3, IGN, IGN, IGN, IGN]])
    full = _run(ids, mask, 2, labels)  # the same as a buffer of exactly the real tokens, padded further
    np.testing.assert_array_equal(emb[:, :5], full[0])
