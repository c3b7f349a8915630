"""Writing HF safetensors checkpoints: shard plan, shards written tensor by tensor, index."""
from __future__ import annotations

import json
import os
import re
from typing import Callable

import numpy as np
from tqdm import tqdm

from llava_mini_jax.safetensors_io import INDEX_NAME, SINGLE_NAME, SafetensorsWriter

_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_size(text) -> int:
    """`"5GB"` -> 5e9 bytes (decimal units as HF uses; `GiB` binary); plain integers are bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", str(text).upper())
    if not m or m.group(2) not in _UNITS and m.group(2) is not None:
        raise ValueError(f"size {text!r}: expected a number of bytes or e.g. '5GB', '500MB', '2GiB'")
    size = int(float(m.group(1)) * _UNITS[m.group(2) or ""])
    if size <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return size


def nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def plan_shards(specs: list, max_bytes: int) -> list[list]:
    """Splits `(name, shape, dtype)` specs, in order, into shards of at most `max_bytes` (a bigger
    tensor gets a shard of its own), as `save_pretrained` does."""
    shards: list[list] = [[]]
    size = 0
    for spec in specs:
        n = nbytes(spec[1], spec[2])
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += n
    return shards


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_hf_weights(directory: str, specs: list, read: Callable[[str], np.ndarray], max_bytes: int,
                     desc: str = "writing safetensors") -> list[str]:
    """Writes `(name, shape, dtype)` specs (read one at a time with `read(name)`, already in the
    declared dtype) as `model.safetensors` or `model-0000i-of-0000n.safetensors` + index.
    Returns the shard file names."""
    shards = plan_shards(specs, max_bytes)
    files = shard_file_names(len(shards))
    total = sum(nbytes(s[1], s[2]) for s in specs)
    weight_map = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc) as bar:
        for file, shard in zip(files, shards):
            with SafetensorsWriter(os.path.join(directory, file), shard, metadata={"format": "pt"}) as w:
                for name, _, _ in shard:
                    a = read(name)
                    w.add(name, a)
                    weight_map[name] = file
                    bar.update(a.nbytes)
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(directory, INDEX_NAME), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
    return files


def write_config(directory: str, config: dict) -> None:
    """`config.json` as `save_pretrained` writes it (sorted keys, indent 2)."""
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
