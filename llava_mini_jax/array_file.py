"""Rectangular blocks of a C-order array stored raw in a file, read with `pread`.

A safetensors tensor and an uncompressed zarr v2 chunk are both a C-order array at some byte
offset of a file. `read_block` reads one box of such an array, as the contiguous runs of bytes
that hold it, straight into the returned array: nothing is memory-mapped (mapped pages of a
multi-GB file would count as resident memory) and the bytes read are exactly the box's, so a
process that loads only its devices' shards reads only those bytes.

    box = ((0, 4), (128, 256))            # rows 0-3, columns 128-255 of a [R, C] array
    block = read_block(fd, offset, (R, C), np.float16, box, what="model.safetensors: lm_head.weight")
"""
from __future__ import annotations

import itertools
import os
from typing import Optional, Sequence

import numpy as np

Box = tuple[tuple[int, int], ...]  # per axis (start, stop), 0 <= start <= stop <= size


def full_box(shape: Sequence[int]) -> Box:
    """The box of the whole array."""
    return tuple((0, int(s)) for s in shape)


def normalize_index(index, shape: Sequence[int]) -> Box:
    """A tuple of slices (step 1, None ends allowed; e.g. a `jax.make_array_from_callback` index)
    as a `Box` over `shape`."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(tuple(index)))
    box = []
    for sl, n in zip(index, shape):
        start, stop, step = sl.indices(int(n))
        if step != 1:
            raise ValueError(f"index {index} has step {step}; only contiguous boxes are read")
        box.append((start, max(start, stop)))
    return tuple(box)


def box_slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def box_size(box: Box) -> int:
    return int(np.prod([b - a for a, b in box], dtype=np.int64))


def read_block(fd: int, offset: int, shape: Sequence[int], dtype, box: Optional[Box] = None,
               what: str = "array") -> np.ndarray:
    """`box` of the C-order array of `shape` and `dtype` whose bytes start at `offset` in the open
    file `fd` (None: the whole array), as a new C-contiguous array.

    Reads one run per position of the axes before the last partial one (`[R, C]` by rows: one
    read; by columns: one read per row). A file that ends early raises ValueError naming `what`
    (e.g. the file and tensor) and the byte that is missing.
    """
    shape = tuple(int(s) for s in shape)
    dt = np.dtype(dtype)
    box = full_box(shape) if box is None else tuple((int(a), int(b)) for a, b in box)
    if len(box) != len(shape) or any(not 0 <= a <= b <= n for (a, b), n in zip(box, shape)):
        raise ValueError(f"{what}: box {box} does not fit shape {shape}")
    out = np.empty(tuple(b - a for a, b in box), dt)
    if out.size == 0:
        return out
    if not shape:  # a scalar
        _pread_into(fd, memoryview(out.reshape(1).view(np.uint8)), offset, what)
        return out
    # axes after `k` are whole: each run covers box[k] and everything after it
    k = max([i for i, ((a, b), n) in enumerate(zip(box, shape)) if (a, b) != (0, n)], default=0)
    inner = int(np.prod(shape[k + 1:], dtype=np.int64))
    run = (box[k][1] - box[k][0]) * inner * dt.itemsize
    strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) * dt.itemsize for i in range(len(shape))]
    buf = memoryview(out.reshape(-1).view(np.uint8))
    pos = 0
    for outer in itertools.product(*[range(a, b) for a, b in box[:k]]):
        start = offset + sum(i * s for i, s in zip(outer, strides)) + box[k][0] * strides[k]
        _pread_into(fd, buf[pos:pos + run], start, what)
        pos += run
    return out


def _pread_into(fd: int, view: memoryview, start: int, what: str) -> None:
    """Fills `view` from byte `start` of `fd` (a read returns at most ~2 GiB, so loop)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], start + done)
        if got == 0:
            raise ValueError(f"{what}: the file ends at byte {start + done}, before the data it declares "
                             f"(truncated? needed bytes up to {start + len(view)})")
        done += got
