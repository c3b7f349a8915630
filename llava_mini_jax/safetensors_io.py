"""Tensor-by-tensor access to a (possibly sharded) safetensors checkpoint directory.

`CheckpointReader` opens `model.safetensors.index.json` (sharded) or a single `*.safetensors`
file and reads one tensor at a time (memory-mapped), so a 19 GB checkpoint never sits in memory.
`SafetensorsWriter` is the other direction: one file, written tensor by tensor from a declared
list of names, shapes and dtypes.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Optional

import ml_dtypes
import numpy as np
from safetensors import safe_open

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointReader:
    """Reads tensors by HF name from the safetensors files of `directory`."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        index = os.path.join(self.directory, INDEX_NAME)
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
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
            with safe_open(os.path.join(self.directory, files[0]), "np") as f:
                for k in f.keys():
                    self.weight_map[k] = files[0]
        self._open: dict = {}

    @property
    def shard_files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def names(self) -> list[str]:
        return list(self.weight_map)

    def _handle(self, shard: str):
        if shard not in self._open:
            self.close()  # keep one shard mapped at a time
            self._open[shard] = safe_open(os.path.join(self.directory, shard), "np").__enter__()
        return self._open[shard]

    def read(self, name: str) -> np.ndarray:
        if name not in self.weight_map:
            raise KeyError(f"tensor {name!r} is not in the checkpoint {self.directory}")
        return self._handle(self.weight_map[name]).get_tensor(name)

    def shape_dtype(self, name: str) -> tuple[tuple[int, ...], str]:
        sl = self._handle(self.weight_map[name]).get_slice(name)
        return tuple(sl.get_shape()), sl.get_dtype()

    def iter_by_shard(self) -> Iterator[tuple[str, str]]:
        """`(shard, name)` pairs grouped by shard, so each shard is mapped once."""
        for shard in self.shard_files:
            for name, s in self.weight_map.items():
                if s == shard:
                    yield shard, name

    def close(self) -> None:
        for h in self._open.values():
            h.__exit__(None, None, None)
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
