"""HF tensors -> our orbax params checkpoint, one tensor (or layer slice) at a time."""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
from tqdm import tqdm

from llava_mini_jax.jax_checkpoint import ParamsWriter, leaf_name

from .fast_layout import for_to_jax
from .layout import Expected

log = logging.getLogger(__name__)


def leaf_dtypes(source, expected: dict[str, Expected], dtype: Optional[np.dtype]) -> dict:
    """`{leaf: dtype}`: `dtype` when given, else each source tensor's own dtype. Layers of one
    stacked leaf must agree; when they do not, the widest wins (logged)."""
    out: dict = {}
    for name, e in expected.items():
        dt = np.dtype(dtype) if dtype is not None else source.spec(name)[1]
        for leaf in e.placement.leaves:
            if leaf in out and out[leaf] != dt:
                wide = np.promote_types(out[leaf], dt)
                log.warning("layers of %s have dtypes %s and %s; storing %s", leaf_name(leaf), out[leaf], dt, wide)
                dt = wide
            out[leaf] = dt
    return out


def write_params(directory: str, source, expected: dict[str, Expected], shapes: dict, dtype=None,
                 desc: str = "writing params") -> None:
    """Writes every expected tensor of `source` into a new params checkpoint at `directory`.

    `shapes` are the param shapes (`layout.leaf_shapes`); `dtype` casts every tensor (None keeps
    each source dtype). The source must have been checked (`layout.check_source`).
    """
    dtypes = leaf_dtypes(source, expected, dtype)
    stacked = {leaf for e in expected.values() if e.placement.layer is not None for leaf in e.placement.leaves}
    writer = ParamsWriter(directory, {leaf: (shapes[leaf], dtypes[leaf], leaf in stacked) for leaf in dtypes})
    order = [n for n in source.names() if n in expected]
    total = sum(int(np.prod(expected[n].shape, dtype=np.int64)) * np.dtype(source.spec(n)[1]).itemsize
                for n in order)
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc) as bar:
            for name in order:
                pl = expected[name].placement
                a = source.read(name)
                if len(pl.leaves) == 1:  # same values, memory order that makes the rule's transpose a view
                    a = for_to_jax(a, shapes[pl.leaves[0]][1:] if pl.layer is not None else shapes[pl.leaves[0]])
                for leaf, part in zip(pl.leaves, pl.rule.to_jax(a)):
                    writer.write(leaf, part.astype(dtypes[leaf], copy=False), pl.layer)
                bar.update(a.nbytes)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
