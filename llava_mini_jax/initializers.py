"""How fresh parameters are drawn: every initial value in one place, for the Flax modules
(`model.init`) and for `convert.init_from_parts` (one HF tensor at a time).

Two uses, two policies, one table:

- `model.init` (a model trained from a `config.json`, tests, the demo): HF's `_init_weights`
  (`hf_default()`, N(0, 0.02)) for every kernel and zero biases, except the compressor, whose
  queries (`query()`), packed in_proj (`packed_in_proj(d)`) and sin-cos `pos_embed`
  (`sincos_pos_embed`) are the recipe's below.
- `init_from_parts` (new parts next to a pretrained LLM and CLIP, to be trained as the reference
  does) follows the reference's training recipe in full (SPEC A §13 B):

| tensor (HF name) | initial value | here |
|---|---|---|
| `model.prefusion_layers.{j}.*_proj.weight` `[out, in]` | U(+-1/sqrt(in)) (PyTorch default Linear) | `torch_linear()` |
| `model.prefusion_layers.{j}.*_layernorm.weight` | 1 | ones |
| `model.mm_projector[.k].weight` `[out, in]` and `.bias` | U(+-1/sqrt(in)) | `torch_linear()`, `torch_linear_bias(in)` |
| `model.compressor.query` `[Q, d]` | N(0, 0.02^2) | `query()` |
| `model.compressor.pos_embed` `[Q, d]` | the fixed 2-D sin-cos table | `sincos_pos_embed(d, C)` |
| `model.compressor.ln_q/ln_kv.weight`, `.bias` | 1, 0 | ones, zeros |
| `model.compressor.attn.in_proj_weight` `[3d, d]` | xavier-uniform U(+-sqrt(6/(d + 3d))) | `packed_in_proj(d)` |
| `model.compressor.attn.in_proj_bias`, `out_proj.bias` | 0 | zeros |
| `model.compressor.attn.out_proj.weight` `[d, d]` | U(+-1/sqrt(d)) | `torch_linear()` |

(`model.init` keeps HF's N(0, 0.02) for the pre-fusion layers, the projector and the compressor's
out_proj, as before this module existed: the tiny training runs and their equivalence tests, and
the demo's figures, start from those values.) `fresh_tensor(name, shape, fan_in, seed)` draws one
recipe tensor with these initialisers (its own key from `(seed, crc32(name))`, so values do not
depend on the order tensors are made in), in float32.
"""
from __future__ import annotations

import math
import re
import zlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Initializer = Callable  # (key, shape, dtype) -> array
HF_STD = 0.02  # HF `_init_weights` (initializer_range) and the compressor's query


def uniform(bound: float) -> Initializer:
    """U(-bound, bound)."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def torch_linear(in_axis=-2, out_axis=-1) -> Initializer:
    """PyTorch's default `nn.Linear` weight: U(+-1/sqrt(fan_in)), fan_in read from the kernel shape
    (`in_axis`: a Flax `[in, out]` kernel by default; `-1` for an HF `[out, in]` weight)."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=in_axis, out_axis=out_axis)


def torch_linear_bias(fan_in: int) -> Initializer:
    """PyTorch's default `nn.Linear` bias: U(+-1/sqrt(fan_in)) of its weight's input width."""
    return uniform(1.0 / math.sqrt(fan_in))


def packed_in_proj(width: int) -> Initializer:
    """`nn.MultiheadAttention`'s packed `[3d, d]` in_proj: xavier-uniform over the packed shape,
    U(+-sqrt(6 / 4d)), also for each of the q/k/v kernels it is split into."""
    return uniform(math.sqrt(6.0 / (4 * width)))


def query() -> Initializer:
    """The compressor's learnable queries: N(0, 0.02^2)."""
    return nn.initializers.normal(HF_STD)


def hf_default() -> Initializer:
    """HF `_init_weights` for the LLM and CLIP kernels: N(0, 0.02^2)."""
    return nn.initializers.normal(HF_STD)


# -- the recipe by HF tensor name (convert.init_from_parts) ----------------------------------------
def sincos_pos_embed(dim: int, size: int) -> np.ndarray:
    """`[size*size, dim]` float32; row `y*size + x` is `[sin(x w), cos(x w), sin(y w), cos(y w)]`
    with `w_k = 10000^(-k / (dim/4))`, k < dim/4. The first half encodes the column x (SPEC Q16)."""
    if dim % 4:
        raise ValueError(f"sin-cos pos-embed width {dim} must be divisible by 4")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    x = xs.reshape(-1)[:, None] * omega[None]
    y = ys.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def _hf_rules() -> tuple:
    """`(pattern, (shape, fan_in) -> Initializer or a fixed array)` per new-part HF tensor."""
    def sincos(shape, fan_in):
        q, d = shape
        side = math.isqrt(q)
        if side * side != q:
            raise ValueError(f"compressor pos_embed has {q} rows, not a square grid")
        return sincos_pos_embed(d, side)

    ones, zeros = nn.initializers.ones, nn.initializers.zeros
    return (
        (r"model\.prefusion_layers\.\d+\.(input|post_attention)_layernorm\.weight", lambda s, f: ones),
        (r"model\.prefusion_layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight", lambda s, f: torch_linear(-1, -2)),
        (r"model\.mm_projector(\.\d+)?\.weight", lambda s, f: torch_linear(-1, -2)),
        (r"model\.mm_projector(\.\d+)?\.bias", lambda s, f: torch_linear_bias(f)),
        (r"model\.compressor\.query", lambda s, f: query()),
        (r"model\.compressor\.pos_embed", sincos),
        (r"model\.compressor\.ln_(q|kv)\.weight", lambda s, f: ones),
        (r"model\.compressor\.ln_(q|kv)\.bias", lambda s, f: zeros),
        (r"model\.compressor\.attn\.in_proj_weight", lambda s, f: packed_in_proj(s[1])),
        (r"model\.compressor\.attn\.(in_proj_bias|out_proj\.bias)", lambda s, f: zeros),
        (r"model\.compressor\.attn\.out_proj\.weight", lambda s, f: torch_linear(-1, -2)),
    )


def hf_rule(name: str) -> Optional[Callable]:
    """The recipe entry of a new-part HF tensor, or None when `name` is not a new part."""
    for pattern, rule in _hf_rules():
        if re.fullmatch(pattern, name):
            return rule
    return None


def fan_in_of(name: str, shapes: dict) -> int:
    """Input width of the Linear an HF tensor belongs to (`weight [out, in]`; a bias uses its
    weight's). `shapes`: `{hf_name: shape}`."""
    weight = re.sub(r"\.bias$", ".weight", name) if name.endswith(".bias") else name
    shape = shapes.get(weight, shapes[name])
    return int(shape[1]) if len(shape) == 2 else int(shape[-1])


def fresh_tensor(name: str, shape: tuple, fan_in: int, seed: int) -> np.ndarray:
    """The initial float32 value of new-part HF tensor `name` (`fan_in`: its Linear's input width)."""
    rule = hf_rule(name)
    if rule is None:
        raise ValueError(f"{name!r} is not a part that init_from_parts creates")
    init = rule(tuple(shape), fan_in)
    if isinstance(init, np.ndarray):
        return init.astype(np.float32)
    key = jax.random.fold_in(jax.random.key(int(seed)), zlib.crc32(name.encode()) & 0x7FFFFFFF)
    with jax.default_device(jax.devices("cpu")[0]):
        return np.asarray(init(key, tuple(shape), jnp.float32))
