"""Where HF tensors come from: safetensors or PyTorch `.bin` files, one tensor at a time.

`open_weights(path)` opens a checkpoint directory (sharded or single) or a single weights file;
`.bin` files are read only with `allow_pickle=True` (`torch.load(weights_only=True)`).
`TensorSource` gathers tensors from several such readers under HF names (e.g. an LLM, a CLIP
tower renamed to `model.vision_tower.vision_tower.*`, generated tensors) and lists them in
storage order, so each shard is mapped once.
"""
from __future__ import annotations

import glob
import os
from typing import Callable, Optional

import numpy as np
from llava_mini_jax import safetensors_io
from llava_mini_jax.safetensors_io import CheckpointReader, numpy_dtype

Shape = tuple[int, ...]


class SafetensorsWeights:
    """A safetensors checkpoint directory (`CheckpointReader`: headers checked at open, tensors
    read with `pread`, nothing memory-mapped), dtypes as numpy dtypes."""

    def __init__(self, directory: str):
        self.location = directory
        self._reader = CheckpointReader(directory)

    def names(self) -> list[str]:
        return [name for _, name in self._reader.iter_by_shard()]

    def shape_dtype(self, name: str) -> tuple[Shape, np.dtype]:
        shape, dtype = self._reader.shape_dtype(name)
        return shape, numpy_dtype(dtype)

    def read(self, name: str) -> np.ndarray:
        return self._reader.read(name)

    def close(self) -> None:
        self._reader.close()


class SafetensorsFile:
    """One `.safetensors` file (e.g. a stage-1 `mm_projector.safetensors`); a truncated or damaged
    file is refused at open, naming it and the tensor."""

    def __init__(self, path: str):
        self.location = path
        self._f = safetensors_io.SafetensorsFile(path)

    def names(self) -> list[str]:
        return self._f.names()

    def shape_dtype(self, name: str) -> tuple[Shape, np.dtype]:
        shape, dtype = self._f.shape_dtype(name)
        return shape, numpy_dtype(dtype)

    def read(self, name: str) -> np.ndarray:
        return self._f.read(name)

    def close(self) -> None:
        self._f.close()


def _has(directory: str, pattern: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(directory), pattern)))


def open_weights(path: str, allow_pickle: bool = False):
    """A reader (`names`, `shape_dtype`, `read`, `close`) for a checkpoint directory or weights file.

    Safetensors are preferred when both formats are present. PyTorch pickles (`*.bin`, `*.pt`)
    need `allow_pickle=True` and torch; they are loaded with `weights_only=True`, memory-mapped.
    """
    if os.path.isfile(path):
        if path.endswith(".safetensors"):
            return SafetensorsFile(path)
        if path.endswith((".bin", ".pt", ".pth")):
            _require_pickle(path, allow_pickle)
            from .torch_bin import TorchBinWeights
            return TorchBinWeights(path)
        raise ValueError(f"{path}: unknown weights file type; expected *.safetensors or a PyTorch *.bin")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"weights path {path} does not exist")
    if _has(path, "*.safetensors") or _has(path, "model.safetensors.index.json"):
        return SafetensorsWeights(path)
    if _has(path, "*.bin") or _has(path, "pytorch_model.bin.index.json"):
        _require_pickle(path, allow_pickle)
        from .torch_bin import TorchBinWeights
        return TorchBinWeights(path)
    raise FileNotFoundError(f"{path} holds no weights: expected model.safetensors, model.safetensors.index.json or "
                            "(with --allow-pickle) pytorch_model.bin")


def _require_pickle(path: str, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise ValueError(f"{path} holds PyTorch pickle (.bin) weights; pass --allow-pickle (allow_pickle=True) to read "
                         "them with torch.load(weights_only=True), or convert them to safetensors first")


class TensorSource:
    """HF tensor names -> (reader, key in that reader). Readers are read in the order added."""

    def __init__(self):
        self._refs: dict[str, tuple] = {}
        self._readers: list = []
        self._generated: dict[str, tuple] = {}

    def add(self, reader, rename: Optional[Callable[[str], Optional[str]]] = None) -> list[str]:
        """Adds the reader's tensors under `rename(key)` (None drops the tensor); returns the HF names added.
        A name already present raises ValueError."""
        self._readers.append(reader)
        added = []
        for key in reader.names():
            name = key if rename is None else rename(key)
            if name is None:
                continue
            if name in self._refs:
                raise ValueError(f"tensor {name!r} comes from both {self._refs[name][0].location} and "
                                 f"{reader.location}")
            self._refs[name] = (reader, key)
            added.append(name)
        return added

    def add_generated(self, name: str, shape: Shape, dtype, make: Callable[[], np.ndarray]) -> None:
        """A tensor made on demand by `make()` (e.g. a fresh initialisation)."""
        if name in self._refs:
            raise ValueError(f"tensor {name!r} is both read from {self._refs[name][0].location} and generated")
        self._refs[name] = (None, name)
        self._generated[name] = (tuple(shape), np.dtype(dtype), make)

    def names(self) -> list[str]:
        return list(self._refs)

    def __contains__(self, name: str) -> bool:
        return name in self._refs

    def spec(self, name: str) -> tuple[Shape, np.dtype]:
        reader, key = self._refs[name]
        if reader is None:
            return self._generated[name][:2]
        return reader.shape_dtype(key)

    def where(self, name: str) -> str:
        reader, _ = self._refs[name]
        return "generated" if reader is None else reader.location

    def read(self, name: str) -> np.ndarray:
        reader, key = self._refs[name]
        if reader is None:
            shape, dtype, make = self._generated[name]
            a = np.asarray(make())
            if a.shape != shape or a.dtype != dtype:
                raise ValueError(f"generated tensor {name!r}: got {a.shape} {a.dtype}, declared {shape} {dtype}")
            return a
        return reader.read(key)

    def close(self) -> None:
        for r in self._readers:
            r.close()
