"""The HF tensors a config implies (names, shapes, order) and checks of a source against them.

Shapes come from the model's abstract params (`jax.eval_shape` of `init`, nothing allocated)
pushed through each rule's `to_hf` on zero-byte (`V0`) arrays, so the expected HF shape of
every tensor is known without touching data.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import numpy as np
from flax import linen as nn

from llava_mini_jax.config import LlavaMiniConfig
from llava_mini_jax.hf_weights import Placement, placements
from llava_mini_jax.loading import abstract_params
from llava_mini_jax.model import LlavaMini

# Buffers some exporters write that carry no weights (skipped, as `load_pretrained` does).
IGNORED_SUFFIXES = ("position_ids", "rotary_emb.inv_freq")
_LIST = 20

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Expected:
    """One HF tensor of a config: where it goes and its HF shape."""

    placement: Placement
    shape: tuple[int, ...]


def leaf_shapes(cfg: LlavaMiniConfig, scan_layers: bool = True) -> dict[Path, tuple[int, ...]]:
    """`{param path: shape}` of the model `cfg` describes, in the `scan_layers` layout."""
    import jax
    boxed = abstract_params(LlavaMini(cfg, scan_layers=scan_layers))
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(boxed))[0]
    return {tuple(k.key for k in path): tuple(x.shape) for path, x in flat}


def hf_shape(pl: Placement, shapes: dict[Path, tuple[int, ...]]) -> tuple[int, ...]:
    """The HF shape of `pl`'s tensor, given the param shapes (stacked leaves lose their layer axis)."""
    parts = tuple(np.empty(shapes[leaf][1:] if pl.layer is not None else shapes[leaf], dtype="V0")
                  for leaf in pl.leaves)
    return tuple(pl.rule.to_hf(parts).shape)


def expected_tensors(cfg: LlavaMiniConfig, shapes: Optional[dict] = None,
                     scan_layers: bool = True) -> dict[str, Expected]:
    """Every HF tensor of `cfg`, in `hf_order`, with its placement and shape (`shapes`: the param
    shapes in the `scan_layers` layout)."""
    shapes = leaf_shapes(cfg, scan_layers) if shapes is None else shapes
    pls = placements(cfg, scan_layers)
    by_name = {pl.hf_name: pl for pl in pls}
    return {n: Expected(by_name[n], hf_shape(by_name[n], shapes)) for n in hf_order(by_name)}


def hf_order(names) -> list[str]:
    """Names in the reference's state-dict order: layer-major (`model.layers.0.*` together)."""
    first: dict[str, int] = {}
    keyed = []
    for pos, name in enumerate(names):
        m = re.match(r"^(.*?layers\.)(\d+)\.", name)
        group = m.group(1) if m else name
        first.setdefault(group, pos)
        keyed.append(((first[group], int(m.group(2)) if m else 0, pos), name))
    return [name for _, name in sorted(keyed)]


def is_ignored(name: str) -> bool:
    return name.endswith(IGNORED_SUFFIXES)


def _listed(items: list) -> str:
    return f"{items[:_LIST]}" + (f" ... ({len(items)} in all)" if len(items) > _LIST else "")


def check_source(source, expected: dict[str, Expected], what: str) -> None:
    """Raises ValueError listing tensors of `source` that are missing, unknown or mis-shaped.

    `source` has `names()` and `spec(name) -> (shape, dtype)`; `what` names it in the message.
    """
    have = [n for n in source.names() if not is_ignored(n)]
    missing = [n for n in expected if n not in source]
    unknown = sorted(n for n in have if n not in expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing: {_listed(missing)}")
    if unknown:
        problems.append(f"{len(unknown)} unknown tensors (not part of this model): {_listed(unknown)}")
    bad = [f"{n}: {tuple(source.spec(n)[0])} (config.json gives {e.shape})"
           for n, e in expected.items() if n in source and tuple(source.spec(n)[0]) != e.shape]
    if bad:
        problems.append(f"{len(bad)} tensors whose shape disagrees with config.json: {_listed(bad)}")
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))
