"""Initial values of the parts a LLaVA-Mini adds to an LLM and a CLIP (SPEC A §13 B, the
reference's training recipe), drawn with numpy, one tensor at a time.

| tensor | initial value |
|---|---|
| `model.prefusion_layers.{j}.*_proj.weight` `[out, in]` | U(+-1/sqrt(in)) (PyTorch default Linear; fresh) |
| `model.prefusion_layers.{j}.*_layernorm.weight` | 1 |
| `model.mm_projector[.k].weight` `[out, in]` and `.bias` | U(+-1/sqrt(in)) (PyTorch default Linear) |
| `model.compressor.query` `[Q, d]` | N(0, 0.02^2) |
| `model.compressor.pos_embed` `[Q, d]` | the fixed 2-D sin-cos table |
| `model.compressor.ln_q/ln_kv.weight`, `.bias` | 1, 0 |
| `model.compressor.attn.in_proj_weight` `[3d, d]` | xavier-uniform U(+-sqrt(6/(d + 3d))) |
| `model.compressor.attn.in_proj_bias`, `out_proj.bias` | 0 |
| `model.compressor.attn.out_proj.weight` `[d, d]` | U(+-1/sqrt(d)) |

Every tensor has its own generator seeded by `(seed, crc32(name))`, so values do not depend on
the order tensors are made in. Values are drawn in float32.
"""
from __future__ import annotations

import math
import re
import zlib
from typing import Callable, Optional

import numpy as np

from llava_mini_jax.compressor import sincos_pos_embed

Shape = tuple[int, ...]


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def uniform(rng: np.random.Generator, shape: Shape, bound: float) -> np.ndarray:
    return ((rng.random(shape, dtype=np.float32) * 2 - 1) * np.float32(bound)).astype(np.float32)


def _ones(shape, rng, fan_in):
    return np.ones(shape, np.float32)


def _zeros(shape, rng, fan_in):
    return np.zeros(shape, np.float32)


def _torch_linear(shape, rng, fan_in):
    return uniform(rng, shape, 1.0 / math.sqrt(fan_in))


def _query(shape, rng, fan_in):
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)


def _xavier_in_proj(shape, rng, fan_in):
    return uniform(rng, shape, math.sqrt(6.0 / (shape[0] + shape[1])))


def _sincos(shape, rng, fan_in):
    q, d = shape
    side = math.isqrt(q)
    if side * side != q:
        raise ValueError(f"compressor pos_embed has {q} rows, not a square grid")
    return sincos_pos_embed(d, side)


# (pattern, init(shape, rng, fan_in)); fan_in is the input width of the tensor's Linear.
RULES: tuple[tuple[str, Callable], ...] = (
    (r"model\.prefusion_layers\.\d+\.(input|post_attention)_layernorm\.weight", _ones),
    (r"model\.prefusion_layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight", _torch_linear),
    (r"model\.mm_projector(\.\d+)?\.(weight|bias)", _torch_linear),
    (r"model\.compressor\.query", _query),
    (r"model\.compressor\.pos_embed", _sincos),
    (r"model\.compressor\.ln_(q|kv)\.weight", _ones),
    (r"model\.compressor\.ln_(q|kv)\.bias", _zeros),
    (r"model\.compressor\.attn\.in_proj_weight", _xavier_in_proj),
    (r"model\.compressor\.attn\.(in_proj_bias|out_proj\.bias)", _zeros),
    (r"model\.compressor\.attn\.out_proj\.weight", _torch_linear),
)


def rule_for(name: str) -> Optional[Callable]:
    """The initialiser of a new-part tensor, or None when `name` is not a new part."""
    for pattern, init in RULES:
        if re.fullmatch(pattern, name):
            return init
    return None


def fresh_tensor(name: str, shape: Shape, fan_in: int, seed: int) -> np.ndarray:
    """The initial float32 value of new-part tensor `name` (`fan_in`: its Linear's input width)."""
    init = rule_for(name)
    if init is None:
        raise ValueError(f"{name!r} is not a part that init_from_parts creates")
    return init(tuple(shape), tensor_rng(seed, name), fan_in)


def fan_in_of(name: str, shapes: dict) -> int:
    """Input width of the Linear a tensor belongs to (`weight [out, in]`; a bias uses its weight's)."""
    weight = re.sub(r"\.bias$", ".weight", name) if name.endswith(".bias") else name
    shape = shapes.get(weight, shapes[name])
    return int(shape[1]) if len(shape) == 2 else int(shape[-1])
