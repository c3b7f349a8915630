"""PyTorch pickle weights (`pytorch_model.bin`, sharded with `pytorch_model.bin.index.json`, or
one `.bin` file), read with `torch.load(weights_only=True, mmap=True)`, one shard at a time.

torch is an optional dependency: it is imported only here, and only when such a file is read.
"""
from __future__ import annotations

import glob
import json
import os

import ml_dtypes
import numpy as np

BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is installed in the test extra
        raise ValueError("reading PyTorch .bin weights needs torch (pip install torch); or convert them to "
                         "safetensors first") from e
    return torch


def _shard_map(path: str) -> tuple[str, dict]:
    """`(directory, {name: shard file})` for a `.bin` file or a directory holding them."""
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), {None: os.path.basename(path)}
    index = os.path.join(path, BIN_INDEX)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        missing = sorted({s for s in weight_map.values() if not os.path.exists(os.path.join(path, s))})
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) that do not exist in {path}: {missing}")
        return path, dict(weight_map)
    files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(glob.escape(path), "*.bin")))
    if BIN_SINGLE in files:
        files = [BIN_SINGLE]
    if len(files) != 1:
        raise FileNotFoundError(f"{path}: expected {BIN_INDEX} or exactly one .bin file, found {files}")
    return path, {None: files[0]}


def to_numpy(tensor) -> np.ndarray:
    """A CPU torch tensor as a numpy array of the same dtype (bfloat16 through ml_dtypes), copied."""
    torch = _torch()
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


class TorchBinWeights:
    """Reader over PyTorch pickle shards with the `names` / `shape_dtype` / `read` interface."""

    def __init__(self, path: str):
        self.location = path
        self.directory, weight_map = _shard_map(path)
        self._shard = None
        self._state: dict = {}
        self._where: dict[str, str] = {}
        self._specs: dict[str, tuple] = {}
        for shard in sorted(set(weight_map.values())):
            for name, t in self._load(shard).items():
                self._where[name] = shard
                self._specs[name] = (tuple(t.shape), to_numpy(t.reshape(-1)[:0]).dtype)
        if None not in weight_map:
            unknown = sorted(set(weight_map) - set(self._where))
            if unknown:
                raise ValueError(f"{self.location}: the index names tensors its shards lack: {unknown[:10]}")

    def _load(self, shard: str) -> dict:
        if self._shard != shard:
            torch = _torch()
            file = os.path.join(self.directory, shard)
            self._state = {}
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
                state = torch.load(file, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            self._state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
            self._shard = shard
        return self._state

    def names(self) -> list[str]:
        return list(self._where)

    def shape_dtype(self, name: str):
        return self._specs[name]

    def read(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise KeyError(f"tensor {name!r} is not in {self.location}")
        return to_numpy(self._load(self._where[name])[name])

    def close(self) -> None:
        self._state, self._shard = {}, None
