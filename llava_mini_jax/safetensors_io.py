"""Tensor-by-tensor access to a (possibly sharded) safetensors checkpoint directory.

`CheckpointReader` opens `model.safetensors.index.json` (sharded) or a single `*.safetensors`
file; `SafetensorsFile` is one file. Headers are parsed and checked when a reader opens, so a
truncated or damaged file is refused with its name and the first tensor it cuts. Tensors, or
boxes of them (`read_box`: only the bytes of the box), are read with `pread` (`array_file`), not
memory-mapped, so a 19 GB checkpoint never sits in memory, not even as mapped pages.
`bytes_read` counts what was read. `SafetensorsWriter` is the other direction: one file, written
tensor by tensor from a declared list of names, shapes and dtypes.

The format (safetensors' own specification): 8 bytes little-endian header length N, N bytes of
JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the
data, offsets relative to its start, each tensor C-order little-endian.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Optional

import ml_dtypes
import numpy as np

from .array_file import Box, read_block

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header


class SafetensorsFile:
    """One `.safetensors` file: `names()`, `shape_dtype(name)`, `read(name)`, `read_box(name, box)`.

    The header is checked when opened: a file too short for its header, a header that is not
    JSON, a tensor whose byte range does not match its shape, or one that ends past the end of
    the file (truncated) raises ValueError naming the file (and the tensor).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"safetensors file {self.path} does not exist")
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{self.path}: {size} bytes, too short for a safetensors file (truncated?)")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"{self.path}: the header length field says {n} bytes but the file has {size - 8} "
                                 "after it (truncated, or not a safetensors file)")
            raw = f.read(n)
        try:
            header = json.loads(raw)
            if not isinstance(header, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise ValueError(f"{self.path}: the safetensors header is not valid JSON ({e}); the file is damaged "
                             "or not a safetensors file") from e
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.size = size
        self._tensors: dict = {}
        for name, e in header.items():
            try:
                dtype, shape, (begin, end) = e["dtype"], tuple(int(d) for d in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{self.path}: tensor {name!r} has a malformed header entry {e!r}") from err
            itemsize = _ST_DTYPES[dtype].itemsize if dtype in _ST_DTYPES else None
            if itemsize is not None and end - begin != int(np.prod(shape, dtype=np.int64)) * itemsize:
                raise ValueError(f"{self.path}: tensor {name!r} declares shape {shape} {dtype} but {end - begin} bytes")
            self._tensors[name] = (dtype, shape, int(begin), int(end))
        cut = sorted((begin, name) for name, (_, _, begin, end) in self._tensors.items()
                     if self.data_start + end > size)
        if cut:
            name = cut[0][1]
            raise ValueError(f"{self.path}: truncated: tensor {name!r} ends at byte "
                             f"{self.data_start + self._tensors[name][3]} but the file has {size} bytes"
                             + (f" ({len(cut) - 1} more tensors after it are cut too)" if len(cut) > 1 else ""))
        self._fd: Optional[int] = None
        self.bytes_read = 0

    def names(self) -> list[str]:
        """Tensor names in storage order."""
        return sorted(self._tensors, key=lambda k: self._tensors[k][2])

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def shape_dtype(self, name: str) -> tuple[tuple[int, ...], str]:
        """`(shape, safetensors dtype name)`, e.g. `((4096, 4096), "BF16")`."""
        dtype, shape, _, _ = self._entry(name)
        return shape, dtype

    def _entry(self, name: str):
        if name not in self._tensors:
            raise KeyError(f"tensor {name!r} is not in {self.path}")
        return self._tensors[name]

    def read(self, name: str) -> np.ndarray:
        """The whole tensor (numpy, its stored dtype)."""
        return self.read_box(name, None)

    def read_box(self, name: str, box: Optional[Box]) -> np.ndarray:
        """Box `box` (per axis `(start, stop)`; None: all) of tensor `name`, reading only its bytes."""
        dtype, shape, begin, _ = self._entry(name)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        out = read_block(self._fd, self.data_start + begin, shape, numpy_dtype(dtype), box,
                         what=f"{self.path}: tensor {name!r}")
        self.bytes_read += out.nbytes
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CheckpointReader:
    """Reads tensors by HF name from the safetensors files of `directory` (every shard's header is
    checked when it opens; at most one file is open at a time)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        index = os.path.join(self.directory, INDEX_NAME)
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{index} is not a safetensors index (JSON with a 'weight_map'): {e}") from e
            missing = sorted({s for s in weight_map.values() if not os.path.exists(os.path.join(self.directory, s))})
            if missing:
                raise FileNotFoundError(f"{index} names shard(s) that do not exist in {self.directory}: {missing}")
            self.weight_map = dict(weight_map)
        else:
            files = sorted(f for f in os.listdir(self.directory) if f.endswith(".safetensors"))
            if not files:
                raise FileNotFoundError(f"no {INDEX_NAME} and no *.safetensors file in {self.directory}")
            if len(files) > 1 and SINGLE_NAME not in files:
                raise FileNotFoundError(f"{len(files)} safetensors files but no {INDEX_NAME} in {self.directory}")
            files = [SINGLE_NAME] if SINGLE_NAME in files else files
            self.weight_map = {}
        self._files = {s: SafetensorsFile(os.path.join(self.directory, s))
                       for s in sorted(set(self.weight_map.values())) or files}
        if not self.weight_map:
            (shard, f), = self._files.items()
            self.weight_map = {k: shard for k in f.names()}
        for name, shard in self.weight_map.items():
            if name not in self._files[shard]:
                raise ValueError(f"{index} maps tensor {name!r} to {shard}, whose header does not have it "
                                 "(a damaged or mismatched shard)")
        self._open: dict = {}

    @property
    def shard_files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    @property
    def bytes_read(self) -> int:
        """Bytes of tensor data read so far (all shards)."""
        return sum(f.bytes_read for f in self._files.values())

    def names(self) -> list[str]:
        return list(self.weight_map)

    def _handle(self, name: str) -> SafetensorsFile:
        if name not in self.weight_map:
            raise KeyError(f"tensor {name!r} is not in the checkpoint {self.directory}")
        shard = self.weight_map[name]
        if shard not in self._open:
            self.close()  # keep one shard open at a time
            self._open[shard] = self._files[shard]
        return self._open[shard]

    def read(self, name: str) -> np.ndarray:
        return self._handle(name).read(name)

    def read_box(self, name: str, box: Optional[Box]) -> np.ndarray:
        """Box `box` of tensor `name` (`SafetensorsFile.read_box`)."""
        return self._handle(name).read_box(name, box)

    def shape_dtype(self, name: str) -> tuple[tuple[int, ...], str]:
        if name not in self.weight_map:
            raise KeyError(f"tensor {name!r} is not in the checkpoint {self.directory}")
        return self._files[self.weight_map[name]].shape_dtype(name)

    def file_of(self, name: str) -> str:
        """The path of the file that holds tensor `name`."""
        return os.path.join(self.directory, self.weight_map[name])

    def iter_by_shard(self) -> Iterator[tuple[str, str]]:
        """`(shard, name)` pairs grouped by shard, in storage order."""
        for shard in self.shard_files:
            for name in self._files[shard].names():
                if self.weight_map.get(name) == shard:
                    yield shard, name

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# Writing: one file, tensor by tensor.
# --------------------------------------------------------------------------------------------

# safetensors dtype names <-> numpy dtypes (bfloat16 and float8 through ml_dtypes).
_ST_DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8), "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16), "U32": np.dtype(np.uint32), "I32": np.dtype(np.int32), "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def numpy_dtype(st_dtype: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype name (`"BF16"` -> `ml_dtypes.bfloat16`)."""
    if st_dtype not in _ST_DTYPES:
        raise ValueError(f"safetensors dtype {st_dtype!r} is not supported; expected one of {sorted(_ST_DTYPES)}")
    return _ST_DTYPES[st_dtype]


def safetensors_dtype(dtype) -> str:
    """The safetensors dtype name of a numpy dtype (`float16` -> `"F16"`)."""
    dt = np.dtype(dtype).newbyteorder("=")
    if dt not in _ST_NAMES:
        raise ValueError(f"dtype {dt} cannot be stored in safetensors; expected one of "
                         f"{sorted(str(d) for d in _ST_NAMES)}")
    return _ST_NAMES[dt]


class SafetensorsWriter:
    """Writes one `.safetensors` file tensor by tensor, holding one tensor at a time.

    The header is written first from the declared `specs` (`(name, shape, dtype)` triples, in
    file order), so every tensor has a fixed place and `add` may come in any order; each
    declared tensor must be added exactly once before `close()`. On an exception inside a `with`
    block the file is removed, so no partial file is left behind.
    """

    def __init__(self, path: str | os.PathLike, specs, metadata: Optional[dict] = None):
        self.path = os.fspath(path)
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        self._where: dict = {}
        offset = 0
        for name, shape, dtype in specs:
            if name in self._where or name == "__metadata__":
                raise ValueError(f"tensor name {name!r} declared twice (or reserved) for {self.path}")
            shape, dt = tuple(int(s) for s in shape), np.dtype(dtype)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            header[name] = {"dtype": safetensors_dtype(dt), "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            self._where[name] = (shape, dt, offset)
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors itself pads
        self._data_start = 8 + len(raw)
        self.nbytes = offset
        self._pending = set(self._where)
        self._file = open(self.path, "wb")
        self._file.write(len(raw).to_bytes(8, "little") + raw)

    def add(self, name: str, array: np.ndarray) -> None:
        """Writes tensor `name` (shape and dtype exactly as declared)."""
        if name not in self._where:
            raise KeyError(f"tensor {name!r} was not declared for {self.path}")
        if name not in self._pending:
            raise ValueError(f"tensor {name!r} was already written to {self.path}")
        shape, dt, offset = self._where[name]
        a = np.asarray(array)
        if a.shape != shape or a.dtype.newbyteorder("=") != dt:
            raise ValueError(f"tensor {name!r}: got shape {a.shape} {a.dtype}, declared {shape} {dt}")
        a = np.ascontiguousarray(a, dtype=dt.newbyteorder("<"))
        self._file.seek(self._data_start + offset)
        self._file.write(a.reshape(-1).view(np.uint8).data)
        self._pending.discard(name)

    def close(self) -> None:
        """Finishes the file; raises ValueError (and removes it) when a declared tensor is missing."""
        if self._file.closed:
            return
        self._file.close()
        if self._pending:
            os.remove(self.path)
            missing = sorted(self._pending)
            raise ValueError(f"{self.path}: {len(missing)} declared tensors were never written: {missing[:10]}")

    def abort(self) -> None:
        """Closes and removes the file."""
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self.path):
            os.remove(self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()
