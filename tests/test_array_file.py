"""array_file.py: `read_block` against numpy slicing of the same bytes, for boxes cutting every
combination of axes, with the file position of every byte it reads checked; truncated files."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from llava_mini_jax.array_file import full_box, normalize_index, read_block

OFFSET = 24  # bytes before the array in the file


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    a = np.random.default_rng(0).standard_normal((4, 5, 6)).astype(np.float32)
    path = tmp_path_factory.mktemp("af") / "raw.bin"
    path.write_bytes(b"x" * OFFSET + a.tobytes())
    return a, str(path)


def _boxes(shape):
    """Every box whose axes are each whole, a prefix, a middle or a suffix range."""
    options = [[(0, n), (0, 1), (1, n - 1), (n - 2, n)] for n in shape]
    return list(itertools.product(*options))


def test_every_box_matches_numpy_and_reads_only_its_bytes(stored, monkeypatch):
    a, path = stored
    spans = []
    real = os.preadv

    def spy(fd, buffers, offset):
        n = real(fd, buffers, offset)
        spans.append((offset, n))
        return n
    monkeypatch.setattr(os, "preadv", spy)
    fd = os.open(path, os.O_RDONLY)
    try:
        for box in _boxes(a.shape):
            spans.clear()
            got = read_block(fd, OFFSET, a.shape, a.dtype, box)
            want = a[tuple(slice(s, e) for s, e in box)]
            np.testing.assert_array_equal(got, want)
            assert got.flags.c_contiguous
            # every byte read belongs to the box, each read once
            assert sum(n for _, n in spans) == want.nbytes
            flat = np.arange(a.size).reshape(a.shape)[tuple(slice(s, e) for s, e in box)]
            allowed = {OFFSET + 4 * int(i) for i in flat.reshape(-1)}
            for off, n in spans:
                assert all(off + 4 * j in allowed for j in range(n // 4)), (box, off, n)
    finally:
        os.close(fd)


def test_whole_array_is_one_read_and_scalars_work(tmp_path):
    path = tmp_path / "s.bin"
    path.write_bytes(np.float64(2.5).tobytes() + np.arange(6, dtype=np.int16).tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_block(fd, 0, (), np.float64) == 2.5
        np.testing.assert_array_equal(read_block(fd, 8, (2, 3), np.int16), np.arange(6).reshape(2, 3))
        assert read_block(fd, 8, (2, 3), np.int16, ((1, 1), (0, 3))).shape == (0, 3)
        with pytest.raises(ValueError, match=r"box \(\(0, 3\), \(0, 3\)\) does not fit shape \(2, 3\)"):
            read_block(fd, 8, (2, 3), np.int16, ((0, 3), (0, 3)))
    finally:
        os.close(fd)


def test_truncated_file_names_what_and_where(tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(np.arange(10, dtype=np.float32).tobytes()[:30])
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match=r"w.safetensors: tensor 'x': the file ends at byte 30, .*up to 40"):
            read_block(fd, 0, (10,), np.float32, what="w.safetensors: tensor 'x'")
    finally:
        os.close(fd)


def test_normalize_index():
    assert normalize_index((slice(None), slice(2, 4)), (3, 8)) == ((0, 3), (2, 4))
    assert normalize_index((slice(1, None),), (3, 8)) == ((1, 3), (0, 8))
    assert full_box((2, 3)) == ((0, 2), (0, 3))
    with pytest.raises(ValueError, match="step 2"):
        normalize_index((slice(0, 3, 2),), (3,))
