"""Tensor-by-tensor access to a (possibly sharded) safetensors checkpoint directory.

`CheckpointReader` opens `model.safetensors.index.json` (sharded) or a single `*.safetensors`
file and reads one tensor at a time (memory-mapped), so a 19 GB checkpoint never sits in memory.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

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
