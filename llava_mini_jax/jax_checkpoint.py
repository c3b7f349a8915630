"""Our converted checkpoint format: an orbax params checkpoint plus a standalone `config.json`.

A JAX checkpoint directory (written by `convert.hf_to_jax` or `convert.init_from_parts --format jax`):

    config.json          the HF config, unchanged, plus `vision_config` (the resolved CLIP config)
    params/              an orbax PyTree checkpoint of the params tree the model uses
        _METADATA            orbax tree metadata (every leaf, `value_type` np.ndarray)
        _CHECKPOINT_METADATA orbax step metadata
        <a.b.c>/             one zarr v2 array per leaf, named by its tree path joined with '.',
                             uncompressed, chunks of one layer for stacked (scanned) leaves and
                             at most `CHUNK_BYTES` otherwise
    tokenizer / processor / generation_config files copied from the source

`params/` is exactly what orbax's `PyTreeCheckpointHandler(use_ocdbt=False)` writes, so
`ocp.PyTreeCheckpointer().restore(OUT / "params")` and `ocp.StandardCheckpointer().restore(...)`
read it; `ParamsWriter` writes it one array (or one layer slice of a stacked array) at a time, so
the whole model is never in memory. Orbax's public API saves a tree of arrays that are all in
memory at once, so the writer keeps its own leaf-by-leaf path and writes the two metadata files
orbax 0.12 writes; `setup.cfg` bounds `orbax-checkpoint` (and `flax`) to `<0.13`, the versions
whose metadata it mimics (`tests/test_jax_checkpoint.py` restores it with orbax itself). `ParamsReader` reads single leaves and layer slices of this
layout and of orbax's default OCDBT layout (a training `CheckpointManager`'s params item);
`HFView` reads them under the reference's tensor names. This module is the on-disk format only:
restoring into a model's shardings is `loading.JaxSource` + `loading.stream_params`.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import time
from typing import Iterable, Optional

import numpy as np

from .array_file import Box, box_slices, full_box, read_block

log = logging.getLogger(__name__)

PARAMS_DIR = "params"
METADATA_FILE = "_METADATA"
CHECKPOINT_METADATA_FILE = "_CHECKPOINT_METADATA"
CHUNK_BYTES = 128 << 20  # largest zarr chunk of an unstacked leaf
INFLIGHT_BYTES = 256 << 20  # written-but-uncommitted bytes ParamsWriter keeps before waiting
TENSORSTORE_CACHE_BYTES = 64 << 20  # ParamsReader's tensorstore cache (orbax layouts)
_PYTREE_HANDLER = "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"

Path = tuple[str, ...]


def is_jax_checkpoint(path: str) -> bool:
    """True for a directory written by `convert.hf_to_jax` (it has a `params/` orbax checkpoint)."""
    return os.path.isdir(os.path.join(path, PARAMS_DIR))


def leaf_name(path: Path) -> str:
    """Orbax's on-disk name of a leaf: its keys joined with '.'."""
    return ".".join(str(k) for k in path)


def chunk_shape(shape: tuple, itemsize: int, stacked: bool) -> list:
    """Zarr chunks: one layer per chunk for a stacked leaf, then halve the leading free axis until a
    chunk holds at most `CHUNK_BYTES` (so sharded restores read bounded pieces)."""
    chunks = [max(int(s), 1) for s in shape]
    first = 1 if stacked else 0
    if stacked and chunks:
        chunks[0] = 1
    for ax in range(first, len(chunks)):
        while chunks[ax] > 1 and int(np.prod(chunks, dtype=np.int64)) * itemsize > CHUNK_BYTES:
            chunks[ax] = -(-chunks[ax] // 2)
    return chunks


def _zarr_dtype(dtype: np.dtype) -> str:
    """Zarr v2 dtype string: `<f2`-style for numpy types, the name for ml_dtypes (`bfloat16`)."""
    dt = np.dtype(dtype)
    return dt.name if dt.kind == "V" else dt.newbyteorder("<").str


class ParamsWriter:
    """Writes an orbax params checkpoint leaf by leaf (stacked leaves layer by layer).

    `leaves`: `{path: (shape, dtype, stacked)}`; a stacked leaf's `shape[0]` is its layer count and
    is written one `write(path, slice, layer=i)` per layer, the others with one `write(path, array)`.
    `finish()` checks that everything was written and writes the orbax metadata; a directory
    without it is not a checkpoint. Writes run asynchronously (tensorstore), at most
    `INFLIGHT_BYTES` ahead.
    """

    def __init__(self, directory: str, leaves: dict):
        import tensorstore as ts
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory)
        self._t0 = time.time_ns()
        self._leaves = dict(leaves)
        self._todo: dict = {}
        self._stores: dict = {}
        self._inflight: list = []
        for path, (shape, dtype, stacked) in self._leaves.items():
            dt = np.dtype(dtype)
            spec = {
                "driver": "zarr",
                "kvstore": {"driver": "file", "path": os.path.join(self.directory, leaf_name(path))},
                "metadata": {"shape": [int(s) for s in shape], "chunks": chunk_shape(shape, dt.itemsize, stacked),
                             "dtype": _zarr_dtype(dt), "compressor": None, "order": "C", "fill_value": None,
                             "dimension_separator": "."},
                "create": True, "open": False,
            }
            self._stores[path] = ts.open(spec).result()
            self._todo[path] = set(range(int(shape[0]))) if stacked else {None}

    def write(self, path: Path, array: np.ndarray, layer: Optional[int] = None) -> None:
        """Writes a whole leaf (`layer=None`) or layer `layer` of a stacked leaf."""
        if path not in self._leaves:
            raise KeyError(f"param {leaf_name(path)!r} was not declared for {self.directory}")
        shape, dtype, stacked = self._leaves[path]
        want = tuple(shape[1:]) if layer is not None else tuple(shape)
        a = np.asarray(array)
        if a.shape != want or a.dtype != np.dtype(dtype):
            where = f"{leaf_name(path)}" + ("" if layer is None else f"[{layer}]")
            raise ValueError(f"param {where}: got {a.shape} {a.dtype}, expected {want} {np.dtype(dtype)}")
        if (layer is None) == stacked or layer not in self._todo[path]:
            raise ValueError(f"param {leaf_name(path)}: layer={layer} is not (or no longer) to be written "
                             f"({'stacked' if stacked else 'unstacked'} leaf)")
        store = self._stores[path] if layer is None else self._stores[path][layer]
        self._wait(INFLIGHT_BYTES - a.nbytes)
        self._inflight.append((store.write(a), a.nbytes))
        self._todo[path].discard(layer)

    def _wait(self, budget: int) -> None:
        """Waits for the oldest writes until at most `budget` bytes are in flight."""
        while self._inflight and sum(n for _, n in self._inflight) > max(budget, 0):
            fut, _ = self._inflight.pop(0)
            fut.result()

    def abort(self) -> None:
        """Waits for the writes in flight, ignoring their errors (before the caller deletes the
        directory: a write landing after the deletion would recreate files)."""
        for fut, _ in self._inflight:
            try:
                fut.result()
            except Exception:  # noqa: BLE001 - the original error is what matters
                pass
        self._inflight.clear()

    def finish(self, custom_metadata: Optional[dict] = None) -> None:
        """Waits for every write, checks completeness, writes the orbax metadata files."""
        self._wait(0)
        missing = [leaf_name(p) + ("" if todo == {None} else f" (layers {sorted(todo)[:8]})")
                   for p, todo in self._todo.items() if todo]
        if missing:
            raise ValueError(f"{self.directory}: {len(missing)} params were not written: {missing[:10]}")
        tree = {str(tuple(path)): {"key_metadata": [{"key": k, "key_type": 2} for k in path],
                                   "value_metadata": {"value_type": "np.ndarray", "skip_deserialize": False}}
                for path in self._leaves}
        _write_json(os.path.join(self.directory, METADATA_FILE), {
            "tree_metadata": tree, "use_ocdbt": False, "use_zarr3": False,
            "store_array_data_equal_to_fill_value": True, "custom_metadata": custom_metadata})
        _write_json(os.path.join(self.directory, CHECKPOINT_METADATA_FILE), {
            "item_handlers": _PYTREE_HANDLER, "metrics": {}, "performance_metrics": {},
            "init_timestamp_nsecs": self._t0, "commit_timestamp_nsecs": time.time_ns(), "custom_metadata": {}})


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


class ParamsReader:
    """Reads leaves, layers of stacked leaves, or boxes of them from an orbax params checkpoint:
    ours, or orbax's default OCDBT / zarr3 layout.

    Our layout (zarr v2, uncompressed, C order: one raw array file per chunk) is read with
    `pread`, only the bytes of the requested box (`bytes_read` counts them); other layouts through
    tensorstore (whole chunks). A damaged checkpoint (a missing or truncated chunk file, unreadable
    metadata) raises one ValueError / FileNotFoundError naming the directory, the param and the
    cause.
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        meta_path = os.path.join(self.directory, METADATA_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path} does not exist: {self.directory} is not an orbax params checkpoint "
                                    "(was the conversion interrupted?)")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            self.use_ocdbt = bool(meta.get("use_ocdbt", False))
            self.use_zarr3 = bool(meta.get("use_zarr3", False))
            self.paths: list[Path] = [tuple(str(k["key"]) for k in entry["key_metadata"])
                                      for entry in meta["tree_metadata"].values()
                                      if not entry.get("value_metadata", {}).get("skip_deserialize")]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{meta_path} is damaged (not orbax tree metadata: {type(e).__name__}: {e})") from None
        self._known = set(self.paths)
        self._stores: dict = {}
        self._context = None
        self._raw: dict = {}
        self.bytes_read = 0

    def _check(self, path: Path) -> None:
        if path not in self._known:
            raise KeyError(f"param {leaf_name(path)!r} is not in {self.directory}")

    def _raw_layout(self, path: Path) -> Optional[dict]:
        """Our zarr v2 layout of a leaf (`shape`, `chunks`, `dtype`), or None when tensorstore must
        read it (OCDBT, zarr3, compressed or Fortran-ordered chunks)."""
        if path not in self._raw:
            self._check(path)
            layout = None
            if not (self.use_ocdbt or self.use_zarr3):
                zpath = os.path.join(self.directory, leaf_name(path), ".zarray")
                if not os.path.isfile(zpath):
                    raise FileNotFoundError(f"{self.directory}: param {leaf_name(path)} has no {zpath} (the checkpoint "
                                            "is incomplete or damaged)")
                try:
                    with open(zpath) as f:
                        z = json.load(f)
                    dtype = _numpy_dtype(z["dtype"])
                    raw = (z.get("compressor") is None and not z.get("filters") and z.get("order", "C") == "C"
                           and dtype.byteorder in "<|=")
                    layout = dict(shape=tuple(int(d) for d in z["shape"]), chunks=tuple(int(c) for c in z["chunks"]),
                                  dtype=dtype, sep=z.get("dimension_separator", ".")) if raw else None
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{zpath} is damaged ({type(e).__name__}: {e})") from None
            self._raw[path] = layout
        return self._raw[path]

    def _store(self, path: Path):
        if path not in self._stores:
            import tensorstore as ts
            self._check(path)
            if self.use_ocdbt:
                kv = {"driver": "ocdbt", "base": f"file://{self.directory}/", "path": leaf_name(path)}
            else:
                kv = {"driver": "file", "path": os.path.join(self.directory, leaf_name(path))}
            spec = {"driver": "zarr3" if self.use_zarr3 else "zarr", "kvstore": kv, "open": True}
            if self._context is None:  # shared by the leaves: OCDBT's manifest and tree nodes are read once
                self._context = ts.Context({"cache_pool": {"total_bytes_limit": TENSORSTORE_CACHE_BYTES}})
            try:
                self._stores[path] = ts.open(spec, context=self._context).result()
            except Exception as e:  # noqa: BLE001 - tensorstore raises ValueError / RuntimeError with long text
                raise ValueError(f"{self.directory}: param {leaf_name(path)} cannot be opened: {_first_line(e)}") from None
        return self._stores[path]

    def layer_chunked(self, path: Path) -> bool:
        """True when every chunk of leaf `path` holds at most one index of its leading axis."""
        raw = self._raw_layout(path)
        if raw is not None:
            return raw["chunks"][:1] == (1,)
        s = self._store(path)
        return s.rank > 0 and int(s.chunk_layout.read_chunk.shape[0]) == 1

    def shape_dtype(self, path: Path) -> tuple[tuple, np.dtype]:
        raw = self._raw_layout(path)
        if raw is not None:
            return raw["shape"], raw["dtype"]
        s = self._store(path)
        return tuple(int(d) for d in s.shape), np.dtype(s.dtype.numpy_dtype)

    def read(self, path: Path, layer: Optional[int] = None) -> np.ndarray:
        """Leaf `path` (numpy), or its layer `layer` when stacked."""
        shape, _ = self.shape_dtype(path)
        if layer is None:
            return self.read_box(path, None)
        return self.read_box(path, ((layer, layer + 1),) + tuple((0, n) for n in shape[1:]))[0]

    def read_box(self, path: Path, box: Optional[Box]) -> np.ndarray:
        """Box `box` (per axis `(start, stop)`; None: all) of leaf `path`."""
        raw = self._raw_layout(path)
        if raw is None:
            s = self._store(path)
            box = full_box(s.shape) if box is None else box
            try:
                out = np.asarray(s[box_slices(box)].read().result())
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"{self.directory}: param {leaf_name(path)} cannot be read: {_first_line(e)}") from None
            self.bytes_read += out.nbytes
            return out
        shape, chunks, dtype = raw["shape"], raw["chunks"], raw["dtype"]
        box = full_box(shape) if box is None else tuple(box)
        out = np.empty(tuple(b - a for a, b in box), dtype)
        if out.size == 0:
            return out
        grid = [range(a // c, -(-b // c)) for (a, b), c in zip(box, chunks)]
        leaf_dir = os.path.join(self.directory, leaf_name(path))
        for cidx in itertools.product(*grid):
            lo = [i * c for i, c in zip(cidx, chunks)]
            sub = tuple((max(a, o), min(b, o + c)) for (a, b), o, c in zip(box, lo, chunks))
            fname = os.path.join(leaf_dir, raw["sep"].join(str(i) for i in cidx) if cidx else "0")
            try:
                fd = os.open(fname, os.O_RDONLY)
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.directory}: param {leaf_name(path)}: chunk file {fname} is missing "
                                        "(the checkpoint is incomplete or damaged)") from None
            try:
                if os.fstat(fd).st_size != int(np.prod(chunks, dtype=np.int64)) * dtype.itemsize:
                    raise ValueError(f"{self.directory}: param {leaf_name(path)}: chunk file {fname} has "
                                     f"{os.fstat(fd).st_size} bytes, expected "
                                     f"{int(np.prod(chunks, dtype=np.int64)) * dtype.itemsize} (truncated or damaged)")
                block = read_block(fd, 0, chunks, dtype, tuple((a - o, b - o) for (a, b), o in zip(sub, lo)),
                                   what=f"{self.directory}: param {leaf_name(path)}: chunk {fname}")
            finally:
                os.close(fd)
            out[tuple(slice(a - ba, b - ba) for (a, b), (ba, _) in zip(sub, box))] = block
            self.bytes_read += block.nbytes
        return out


def _numpy_dtype(zarr_dtype: str) -> np.dtype:
    """A zarr v2 dtype string (`<f4`, or an ml_dtypes name such as `bfloat16`) as a numpy dtype."""
    import ml_dtypes
    if hasattr(ml_dtypes, str(zarr_dtype)):
        return np.dtype(getattr(ml_dtypes, zarr_dtype))
    return np.dtype(zarr_dtype)


def _first_line(e: BaseException) -> str:
    """The first line of an exception's text (tensorstore's run to many lines of context)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def stored_scan_layout(paths: Iterable[Path]) -> bool:
    """True when stacked (scanned) layers are stored (`.../layers/...` leaves)."""
    return any("layers" in p for p in paths)


class HFView:
    """A params checkpoint seen as HF tensors: `read(hf_name)` gives the reference's name, layout
    and (stored) dtype, one tensor at a time. `names` follow `hf_weights.placements`."""

    def __init__(self, reader: ParamsReader, cfg):
        from .hf_weights import placements
        self.reader = reader
        self.scan_layers = stored_scan_layout(reader.paths)
        self.placements = {pl.hf_name: pl for pl in placements(cfg, self.scan_layers)}
        expected = {leaf for pl in self.placements.values() for leaf in pl.leaves}
        stored = set(reader.paths)
        if expected != stored:
            missing = sorted(leaf_name(p) for p in expected - stored)
            extra = sorted(leaf_name(p) for p in stored - expected)
            raise ValueError(f"{reader.directory} does not hold the params of this config.json "
                             f"({cfg.mode} model, scan_layers={self.scan_layers}): missing {missing[:10]}, "
                             f"unexpected {extra[:10]}")

    @property
    def names(self) -> list[str]:
        return list(self.placements)

    def read(self, hf_name: str) -> np.ndarray:
        pl = self.placements[hf_name]
        return pl.rule.to_hf(tuple(self.reader.read(leaf, pl.layer) for leaf in pl.leaves))
