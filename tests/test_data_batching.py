"""Tests for llava_mini_jax.data.batching: padding to buckets, pixels, inert rows."""

import numpy as np
import pytest

from llava_mini_jax.data.batching import bucket_length, collate, pixel_shape
from llava_mini_jax.data.features import Example, Skipped

PAD, BOS = 0, 1
IMAGE_SHAPE, VIDEO_SHAPE = (1, 3, 4, 4), (2, 1, 3, 4, 4)
KW = dict(pad_id=PAD, first_id=BOS, buckets=(4, 8, 16), image_shape=IMAGE_SHAPE,
          video_shape=VIDEO_SHAPE)


def example(sid, ids, labels, kind="image", fully_masked=False, fill=1.0):
    shape = {"image": IMAGE_SHAPE, "video": VIDEO_SHAPE, "text": None}[kind]
    pixels = None if shape is None else np.full(shape, fill, np.float32)
    return Example(0, sid, kind, np.asarray(ids, np.int32), np.asarray(labels, np.int32), pixels,
                   fully_masked)


def test_bucket_length():
    assert [bucket_length(n, (4, 8, 16)) for n in (1, 4, 5, 8, 9, 16)] == [4, 4, 8, 8, 16, 16]
    with pytest.raises(ValueError, match="length 17 exceeds the largest bucket 16"):
        bucket_length(17, (4, 8, 16))


def test_pixel_shape():
    assert pixel_shape("image", 5, 336, 336, 8) == (5, 3, 336, 336)
    assert pixel_shape("text", 1, 336, 336, 8) == (1, 3, 336, 336)
    assert pixel_shape("video", 1, 336, 336, 8) == (8, 1, 3, 336, 336)


def test_collate_pads_right_to_the_bucket():
    rows = [example("a", [1, -200, 5, 6, 2], [-100, -100, -100, 6, 2], fill=2.0),
            example("t", [1, 7, 2], [-100, 7, 2], kind="text"),
            example("m", [1, -200, 9], [-100] * 3, fully_masked=True)]
    arrays, info = collate(rows, **KW)
    assert sorted(arrays) == ["attention_mask", "images", "input_ids", "labels"]
    np.testing.assert_array_equal(arrays["input_ids"], [[1, -200, 5, 6, 2, 0, 0, 0],
                                                        [1, 7, 2, 0, 0, 0, 0, 0],
                                                        [1, -200, 9, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["attention_mask"], [[1] * 5 + [0] * 3,
                                                             [1] * 3 + [0] * 5,
                                                             [1] * 3 + [0] * 5])
    np.testing.assert_array_equal(arrays["labels"][0], [-100, -100, -100, 6, 2] + [-100] * 3)
    assert all(a.dtype == np.int32 for k, a in arrays.items() if k != "images")
    assert arrays["images"].shape == (3,) + IMAGE_SHAPE and arrays["images"].dtype == np.float32
    assert (arrays["images"][0] == 2).all() and (arrays["images"][1] == 0).all()
    assert info.ids == ("a", "t", "m") and info.kind == "image"
    assert info.skipped == () and info.fully_masked == ("m",)


def test_mask_is_length_based_even_with_pad_ids_inside():
    """A literal pad id inside the text stays attended (the reference would mask it)."""
    arrays, _ = collate([example("a", [1, PAD, 5], [-100, PAD, 5], kind="text")], **KW)
    np.testing.assert_array_equal(arrays["attention_mask"], [[1, 1, 1, 0]])


def test_skipped_rows_are_inert():
    rows = [Skipped(3, "bad", "video", "missing_media", "gone"),
            example("v", [1, -200, 4, 2], [-100, -100, 4, 2], kind="video", fill=3.0)]
    arrays, info = collate(rows, **KW)
    assert arrays["images"].shape == (2,) + VIDEO_SHAPE
    np.testing.assert_array_equal(arrays["input_ids"][0], [BOS, 0, 0, 0])
    np.testing.assert_array_equal(arrays["attention_mask"][0], [1, 0, 0, 0])
    assert (arrays["labels"][0] == -100).all() and (arrays["images"][0] == 0).all()
    assert (arrays["images"][1] == 3).all()
    assert info.kind == "video" and info.skipped == ((0, "bad", "missing_media", "gone"),)


def test_all_rows_skipped_still_gives_a_batch():
    arrays, info = collate([Skipped(0, "x", "image", "corrupt_media", "m")] * 2, **KW)
    assert arrays["input_ids"].shape == (2, 4) and len(info.skipped) == 2


def test_video_and_image_rows_do_not_mix():
    rows = [example("v", [1, -200], [-100, -100], kind="video"), example("t", [1], [-100], "text")]
    with pytest.raises(ValueError, match=r"cannot mix videos with other kinds, got \['text', 'video'\]"):
        collate(rows, **KW)


def test_wrong_pixel_shape_names_the_sample():
    bad = Example(0, "odd", "image", np.array([1], np.int32), np.array([-100], np.int32),
                  np.zeros((5, 3, 4, 4), np.float32), False)
    with pytest.raises(ValueError, match=r"sample 'odd': pixels of shape \(5, 3, 4, 4\)"):
        collate([bad], **KW)
