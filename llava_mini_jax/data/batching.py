"""Collation: examples -> one fixed-shape batch, padded to a length bucket.

A batch is a dict of numpy arrays::

    input_ids      [B, Lb] int32  right-padded with the tokenizer's pad id
    attention_mask [B, Lb] int32  1 on each row's tokens, 0 on the padding after them
    labels         [B, Lb] int32  -100 on padding and on unsupervised tokens
    images         [B, P, 3, H, W] float32, or [B, T, P, 3, H, W] for a video batch

`Lb` is the smallest bucket that holds the longest row. A text-only row carries a zero image (the
model ignores it, SPEC Q6); a batch is either video or not, never both (the order guarantees it).

Two differences from the reference's collator: the attention mask comes from each row's length,
not from `input_ids != pad_id` (which also masks a literal `<unk>` inside the text and would
leave a hole the model's right-padding check rejects); and nothing is truncated (over-long
samples were skipped when built).

A skipped sample becomes an inert row: one BOS token (attention 1), no label, zero pixels. It
keeps the batch shape static and gives no gradient; `BatchInfo` says which rows are inert.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Sequence, Union

import numpy as np

from llava_mini_jax.config import IGNORE_INDEX
from llava_mini_jax.data.features import Example, Skipped

Row = Union[Example, Skipped]


@dataclasses.dataclass(frozen=True)
class BatchInfo:
    """What a batch holds, besides its arrays (for counting and logging on the host).

    Attributes:
      ids: sample id per row. kind: "video" for a video batch, else "image" (images and text).
      skipped: `(row, sample id, reason, message)` for each inert row.
      fully_masked: ids of rows whose labels are all -100 although the sample is good.
      masked_reasons: the `features.MASKED_REASONS` code of each of those rows.
    """

    ids: tuple[str, ...]
    kind: str
    skipped: tuple[tuple[int, str, str, str], ...]
    fully_masked: tuple[str, ...]
    masked_reasons: tuple[str, ...] = ()


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= `length` (buckets sorted ascending)."""
    k = bisect.bisect_left(buckets, length)
    if k == len(buckets):
        raise ValueError(f"sequence length {length} exceeds the largest bucket {buckets[-1]}")
    return int(buckets[k])


def pixel_shape(kind: str, parts: int, height: int, width: int,
                num_frames: int) -> tuple[int, ...]:
    """Per-row pixel shape: `(T, P, 3, H, W)` for "video", else `(P, 3, H, W)`."""
    row = (parts, 3, height, width)
    return (num_frames,) + row if kind == "video" else row


def collate(rows: Sequence[Row], *, pad_id: int, first_id: int, buckets: Sequence[int],
            image_shape: tuple[int, ...], video_shape: tuple[int, ...]
            ) -> tuple[dict[str, np.ndarray], BatchInfo]:
    """Pads `rows` into one batch.

    Args:
      rows: examples, or `Skipped` rows that become inert.
      pad_id: token id of the padding. first_id: the inert rows' single token (BOS).
      buckets: ascending padding lengths.
      image_shape, video_shape: per-row pixel shapes of image/text and video batches.

    Returns:
      `(arrays, info)`, arrays as in the module docstring.

    Raises:
      ValueError: rows that mix video with non-video kinds, or a row longer than every bucket.
    """
    is_video = {r.kind == "video" for r in rows}
    if len(is_video) > 1:
        kinds = sorted({r.kind for r in rows})
        raise ValueError(f"a batch cannot mix videos with other kinds, got {kinds}")
    kind = "video" if is_video == {True} else "image"
    shape = video_shape if kind == "video" else image_shape
    lengths = [len(r.input_ids) if isinstance(r, Example) else 1 for r in rows]
    width = bucket_length(max(lengths), buckets)
    b = len(rows)
    input_ids = np.full((b, width), pad_id, np.int32)
    labels = np.full((b, width), IGNORE_INDEX, np.int32)
    mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    images = np.zeros((b,) + tuple(shape), np.float32)
    skipped, fully_masked, reasons = [], [], []
    for i, row in enumerate(rows):
        if isinstance(row, Skipped):
            input_ids[i, 0] = first_id
            skipped.append((i, row.sample_id, row.reason, row.message))
            continue
        input_ids[i, :lengths[i]] = row.input_ids
        labels[i, :lengths[i]] = row.labels
        if row.pixels is not None:
            if row.pixels.shape != tuple(shape):
                raise ValueError(f"sample {row.sample_id!r}: pixels of shape {row.pixels.shape}, "
                                 f"expected {tuple(shape)} for a {kind} batch")
            images[i] = row.pixels
        if row.fully_masked:
            fully_masked.append(row.sample_id)
            reasons.append(row.masked_reason or "no_supervised_token")
    arrays = {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "images": images}
    info = BatchInfo(tuple(r.sample_id for r in rows), kind, tuple(skipped), tuple(fully_masked), tuple(reasons))
    return arrays, info
