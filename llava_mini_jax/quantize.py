"""Weight-only int8 / int4 quantization of the LLM's and pre-fusion's linear layers (optionally CLIP's),
on Google's qwix.

    quantize_model(model, QuantizeConfig("int4"))  -> the same LlavaMini, its matmuls intercepted
    quantize_params(params, abstract)               -> float params -> quantized params, leaf by leaf
    param_bytes(tree)                                -> bytes of a (possibly abstract) params tree

What qwix does (`qwix.PtqProvider`, `qwix.quantize_model`): it intercepts `jax.lax.dot_general` /
`jnp.einsum` (and `Module.param`) inside the model's methods, so the modules, their parameter names
and their logical axis names stay as they are; a matched kernel is a `QArray` (`qvalue` + `scale`)
and the matmul runs on it (`qwix.dot_general`: the integer values times the activations, the scale
applied to the output). Modes:

- `int8`: one scale per output channel (every non-contracted axis of the kernel: `[1, heads,
  head_dim]` for a query projection), absmax, symmetric.
- `int4`: one scale per `group_size` (default 128) consecutive inputs of the last contracted axis
  and per output channel (`[D/128, I]` for a gate projection); the LM head the same.

Quantized by default: the LLM's and the pre-fusion's attention and MLP projections, the LM head and
the token embedding (per row, or per row and group); with `vision=True` also CLIP's projections.
Left in the parameter dtype: norms, biases, the projector, the compressor, CLIP's patch and
position embeddings, a tied embedding (its transpose is the head). Activations stay in the compute
dtype; logits float32.

What is written here by hand, and why (qwix 0.1.8 does not do it for this model):

- the quantized params are plain nested dicts: a quantized kernel is `{"qvalue": int8|int4 array,
  "scale": array}` at the kernel's path (the layout qwix's own pre-quantized checkpoints use), so
  shardings by path, `flax.traverse_util`, the training state and our checkpoint writer treat them
  like any params. The quantized model's `init` returns this form and its `apply` turns it into
  qwix's `WithAux(QArray)` leaves before Flax sees it (`_to_qwix`).
- `quantize_params` quantizes leaf by leaf from the shapes of the abstract quantized tree (qwix's
  `quantize_params` takes the axes from the un-scanned layer and gets scanned `[layers, ...]`
  kernels wrong); the axes are read back from the `qvalue` / `scale` shapes (`layout`).
- the token embedding: a gather, not a matmul, which qwix does not intercept; `QuantizedLookups.take`
  gathers rows of `qvalue` and `scale` and dequantizes only those.
- the LM head's einsum keeps its float32 `preferred_element_type` (qwix's PTQ einsum drops it).
- int4 on disk: two values per byte (`pack_int4`), see `convert/quantize.py` and `load_quantized`.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import types
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

MODES = ("int8", "int4")
QUANTIZATION_FILE = "quantization.json"  # in a quantized checkpoint directory, next to config.json
QKEYS = ("qvalue", "scale")


@functools.cache
def qwix_api() -> types.SimpleNamespace:
    """qwix's names this module and `lora.py` use, imported on first use (a float model, its loading
    and its training without LoRA never need qwix). Three are unexported (setup.cfg pins
    qwix==0.1.8): `WithAux` (the wrapper of a quantized param the intercepted ops read),
    `HowToQuantize` (how an array is quantized) and `create_quantized_param` / `find_param` (PTQ's
    param replacement at init)."""
    try:
        import qwix
        from qwix._src.core.qarray import HowToQuantize
        from qwix._src.providers.ptq import WithAux, create_quantized_param
        from qwix._src.utils.flax_util import find_param
    except ImportError as e:
        raise ImportError("int8 / int4 quantization and LoRA need qwix==0.1.8 (setup.cfg): `pip install "
                          "qwix==0.1.8`, or on a machine without a package index `pip install --no-deps "
                          "qwix-0.1.8-py3-none-any.whl` (its wheel, pure Python)") from e
    names = ("QuantizationRule", "LoraRule", "PtqProvider", "LoraProvider", "QArray", "quantize", "dequantize",
             "dot_general", "einsum", "quantize_model")
    return types.SimpleNamespace(**{n: getattr(qwix, n) for n in names}, WithAux=WithAux,
                                 HowToQuantize=HowToQuantize, create_quantized_param=create_quantized_param,
                                 find_param=find_param)

# Module paths (`a/b/c`, as qwix matches them) of the layers each option quantizes.
_LLM = r"(llm/decoder|prefusion)/layers(_\d+)?/"
_VISION = r"vision_tower/layers(_\d+)?/"
HEAD = "llm"  # the LM head's einsum runs in LlamaLM
EMBEDDING = "llm/embed_tokens"


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """`mode`: `int8` (per output channel) or `int4` (groups of `group_size` inputs); `head`: also
    the LM head and the token embedding (untied only); `vision`: also CLIP's linear layers."""

    mode: str = "int8"
    group_size: int = 128
    head: bool = True
    vision: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"quantize mode {self.mode!r}: expected one of {list(MODES)}")
        if self.group_size < 1:
            raise ValueError(f"quantize group_size={self.group_size}: expected >= 1")

    @property
    def qtype(self):
        return jnp.int8 if self.mode == "int8" else jnp.int4

    @property
    def tile_size(self) -> Optional[int]:
        """The contracted axis' group (qwix's `tile_size`): None (whole axis) for int8."""
        return self.group_size if self.mode == "int4" else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantizeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"quantization config: unknown keys {bad}; expected {sorted(known)}")
        return cls(**d)


QuantizeSpec = Union[None, str, dict, QuantizeConfig]


def as_config(spec: QuantizeSpec) -> Optional[QuantizeConfig]:
    """None, a mode name (`"int8"`, `"int4"`), a dict of fields or a `QuantizeConfig`."""
    if spec is None or isinstance(spec, QuantizeConfig):
        return spec
    if isinstance(spec, str):
        return QuantizeConfig(mode=spec)
    if isinstance(spec, dict):
        return QuantizeConfig.from_dict(spec)
    raise ValueError(f"quantize={spec!r}: expected None, {' | '.join(map(repr, MODES))}, a dict or a QuantizeConfig")


def group_size(size: int, group: int) -> int:
    """The int4 group of an axis of `size` inputs: `group`, or the largest divisor of `size` below it
    (CLIP-L's 64-wide heads: 64)."""
    return max(d for d in range(1, min(size, group) + 1) if size % d == 0)


def quantized_ops(config: QuantizeConfig, model_config) -> list[tuple[str, tuple, Any]]:
    """`(module path regex, op names, qwix tile_size)` of every kind of weight `config` quantizes in a
    model of `model_config` (a `LlavaMiniConfig`). int4 groups run along the last contracted axis;
    the output projections (`[heads, head_dim, D]`) are grouped per head and within the head (qwix
    would otherwise share one scale across all heads)."""
    llm, vision = model_config.llm, model_config.vision

    def tiles(size: int, per_head: bool = False):
        if config.tile_size is None:
            return None
        g = group_size(size, config.tile_size)
        return {0: 1, 1: g} if per_head else g
    dot = ("dot_general",)
    ops = [(_LLM + r"self_attn/[qkv]_proj", dot, tiles(llm.hidden_size)),
           (_LLM + r"self_attn/o_proj", dot, tiles(llm.head_dim, per_head=True)),
           (_LLM + r"mlp/(gate|up)_proj", dot, tiles(llm.hidden_size)),
           (_LLM + r"mlp/down_proj", dot, tiles(llm.intermediate_size))]
    if config.vision:
        ops += [(_VISION + r"[qkv]_proj", dot, tiles(vision.hidden_size)),
                (_VISION + r"out_proj", dot, tiles(vision.head_dim, per_head=True)),
                (_VISION + r"fc1", dot, tiles(vision.hidden_size)),
                (_VISION + r"fc2", dot, tiles(vision.intermediate_size))]
    if config.head and not llm.tie_word_embeddings:  # a tied head is the embedding's transpose
        ops += [(HEAD, ("einsum",), tiles(llm.hidden_size)), (EMBEDDING, ("take",), tiles(llm.hidden_size))]
    return ops


def rules(config: QuantizeConfig, model_config) -> list:
    """The qwix rules of `config` for a model of `model_config` (`quantized_ops`)."""
    return [qwix_api().QuantizationRule(module_path=path, op_names=names, weight_qtype=config.qtype, tile_size=tile)
            for path, names, tile in quantized_ops(config, model_config)]


# -- the provider: qwix's PTQ plus the embedding gather and a typed einsum --------------------------
def _matmul_dims(einsum_str: str, lhs_ndim: int, rhs_ndim: int):
    """The `dot_general` dimension numbers of an einsum `...d,dv->...v` (the last axis of the
    activations against the first of a 2-D weight), else None. (qwix's einsum puts the weight first,
    a bf16 x bf16 -> f32 dot that XLA:CPU does not run.)"""
    spec = einsum_str.replace(" ", "")
    if "->" not in spec or spec.count(",") != 1 or "." in spec:
        return None
    ins, out = spec.split("->")
    a, b = ins.split(",")
    if rhs_ndim != 2 or len(a) != lhs_ndim or len(b) != 2 or a[-1] != b[0] or out != a[:-1] + b[1]:
        return None
    return (((lhs_ndim - 1,), (0,)), ((), ()))


class QuantizedLookups:
    """Provider mixin: quantizes the token embedding (a gather) and keeps an einsum's
    `preferred_element_type` (the LM head's float32 logits)."""

    def einsum(self, einsum_str, *operands, preferred_element_type=None, **kwargs):
        if len(operands) == 2 and isinstance(operands[1], qwix_api().WithAux):  # apply: the weight is quantized
            lhs, rhs = operands[0], operands[1].array
            dims = _matmul_dims(einsum_str, lhs.ndim, rhs.ndim)
            if dims is not None:  # `...d,dv->...v` (the LM head) as a dot_general, activations first
                return qwix_api().dot_general(lhs, rhs, dims, preferred_element_type=preferred_element_type)
            return qwix_api().einsum(einsum_str, lhs, rhs, preferred_element_type=preferred_element_type)
        out = super().einsum(einsum_str, *operands, preferred_element_type=preferred_element_type, **kwargs)
        return out if preferred_element_type is None else out.astype(preferred_element_type)

    def take(self, a, indices, axis=None, **kwargs):
        """`jnp.take(table, ids, axis=0)` of a quantized table: gathers rows of `qvalue` and `scale`,
        dequantizes them. A float table of a matched module is quantized first (at `init`)."""
        rule, _ = self._get_current_rule_and_op_id("take")
        if rule is None or rule.weight_qtype is None or axis != 0:
            return jnp.take(a, indices, axis=axis, **kwargs)
        if isinstance(a, qwix_api().WithAux):
            q = a.array
        else:  # initialising: replace the float table with its quantized form (per row [, group])
            tiled = {1: rule.tile_size} if rule.tile_size else {}
            how = qwix_api().HowToQuantize(qtype=rule.weight_qtype, channelwise_axes=[0], tiled_axes=tiled)
            q = qwix_api().create_quantized_param(qwix_api().find_param(a), a, how).array
        rows = qwix_api().QArray(jnp.take(q.qvalue, indices, axis=0, **kwargs),
                           jnp.take(q.scale, indices, axis=0, **kwargs), qtype=q.qtype)
        return qwix_api().dequantize(rows)

    def get_intercept_map(self):
        return super().get_intercept_map() | {"jax.numpy.take": self.take}


@functools.cache
def provider_class(name: str) -> type:
    """`QuantizedLookups` over qwix's provider class `name`: `"PtqProvider"` (post-training,
    weight-only quantization; `quantize_model`) or `"LoraProvider"` ((Q)LoRA; `lora.lora_model`)."""
    return type(f"Quantized{name}", (QuantizedLookups, getattr(qwix_api(), name)), {})


# -- params: plain dicts outside the model, qwix's WithAux inside --------------------------------
def is_quantized_leaf(node) -> bool:
    """True for a quantized param in the dict form: `{"qvalue": ..., "scale": ...}`."""
    return isinstance(node, dict) and set(node) == set(QKEYS)


def layout(qvalue_shape, scale_shape) -> tuple[list, dict]:
    """`(channelwise axes, {tiled axis: group})` of a quantized array, read from its shapes: an axis
    with a scale per element is channelwise, one with fewer (but more than one) scales is grouped,
    one with a single scale is reduced whole."""
    channelwise, tiled = [], {}
    for i, (q, s) in enumerate(zip(qvalue_shape, scale_shape)):
        if s == q:
            channelwise.append(i)
        elif s > 1:
            if q % s:
                raise ValueError(f"quantized shape {tuple(qvalue_shape)} with scale {tuple(scale_shape)}: axis {i} "
                                 "is not divisible into groups")
            tiled[i] = q // s
    return channelwise, tiled


def _to_qwix(tree):
    """Dict-form quantized leaves -> qwix's `WithAux(QArray)` (what the intercepted model reads)."""
    if is_quantized_leaf(tree):
        q, s = tree["qvalue"], tree["scale"]
        qtype = jnp.dtype(q.dtype)
        channelwise, tiled = layout(q.shape, s.shape)
        how = qwix_api().HowToQuantize(qtype=qtype, channelwise_axes=channelwise, tiled_axes=tiled)
        return qwix_api().WithAux(qwix_api().QArray(q, s, qtype=qtype), how)
    if isinstance(tree, dict):
        return {k: _to_qwix(v) for k, v in tree.items()}
    return tree


def _from_qwix(tree):
    """qwix's `WithAux(QArray)` leaves (boxed or not) -> the dict form."""
    if isinstance(tree, qwix_api().WithAux):
        return {"qvalue": tree.array.qvalue, "scale": tree.array.scale}
    if isinstance(tree, dict):
        return {k: _from_qwix(v) for k, v in tree.items()}
    return tree


def _wrap_class(model: nn.Module, attrs: dict) -> nn.Module:
    """Gives a qwix-intercepted model an `init` that returns dict-form params, an `apply` that
    accepts them, and the class attributes `attrs`."""
    base = type(model)

    def init(self, *args, **kwargs):
        return _from_qwix(dict(base.init(self, *args, **kwargs)))

    def apply(self, variables, *args, **kwargs):
        return base.apply(self, _to_qwix(dict(variables)), *args, **kwargs)

    model.__class__ = type(base.__name__, (base,), {"init": init, "apply": apply, **attrs})
    return model


def model_methods(cls) -> list[str]:
    """`__call__` and the public methods `cls` (and its bases below `nn.Module`) define: every method
    callers apply (`method="prefill"`, `method=type(model).row_losses`, ...)."""
    names = {"__call__"}
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        names |= {n for n, v in vars(klass).items() if inspect.isfunction(v) and not n.startswith("_") and n != "setup"}
    return sorted(names)


def intercept(model: nn.Module, provider, **attrs) -> nn.Module:
    """`model` (a `LlavaMini`) with `provider`'s interception on every public method; params in the
    dict form (`init` returns it, `apply` takes it); `attrs` become class attributes."""
    return _wrap_class(qwix_api().quantize_model(model, provider, methods=model_methods(type(model))), attrs)


def quantize_model(model: nn.Module, config: QuantizeSpec) -> nn.Module:
    """The weight-only quantized twin of a `LlavaMini`: same fields, same numbers of a float model's
    unquantized parts; its params are `quantize_params`' output."""
    config = as_config(config)
    if config is None:
        return model
    provider = provider_class("PtqProvider")(rules(config, model.config))
    return intercept(model, provider, quantize_config=config)


def model_quantize_config(model) -> Optional[QuantizeConfig]:
    """The `QuantizeConfig` a model was quantized with (None for a float model)."""
    return getattr(type(model), "quantize_config", None)


# -- quantizing params ------------------------------------------------------------------------------
def quantize_array(x: jax.Array, qtype, qvalue_shape, scale_shape) -> dict:
    """One float array -> `{"qvalue", "scale"}` with the layout the shapes give (scale dtype = x's)."""
    channelwise, tiled = layout(qvalue_shape, scale_shape)
    q = qwix_api().quantize(x, qtype, channelwise_axes=channelwise, tiled_axes=tiled)
    return {"qvalue": q.qvalue, "scale": q.scale}


def quantize_params(params: dict, abstract: dict, shardings=None, consume: bool = False) -> dict:
    """Float params -> the quantized model's params, one leaf at a time (each quantized by its own
    jitted function, straight into `shardings[path]` when given).

    `abstract`: the quantized model's (unboxed or boxed) abstract params (`loading.abstract_params`
    of `quantize_model(...)`); `shardings`: a tree like `abstract` (None: where the input is).
    `consume=True` deletes each float leaf once quantized, so a device holds the float model plus one
    quantized leaf at most. Leaves `abstract` keeps in float pass through unchanged; leaves of
    `abstract` absent from `params` (e.g. LoRA adapters, added later) are left out.
    """
    want = traverse_util.flatten_dict(nn.unbox(abstract), is_leaf=lambda _, v: is_quantized_leaf(v))
    have = traverse_util.flatten_dict(params)
    missing = sorted("/".join(p) for p, t in want.items() if is_quantized_leaf(t) and p not in have)
    unknown = sorted("/".join(p) for p in have if p not in want)
    if missing or unknown:
        raise ValueError(f"quantize_params: the params do not fit the quantized model: missing {missing[:10]}, "
                         f"unexpected {unknown[:10]}")
    flat_sh = {} if shardings is None else traverse_util.flatten_dict(
        shardings, is_leaf=lambda _, v: is_quantized_leaf(v))
    out = {}
    for path, x in have.items():
        target = want[path]
        if not is_quantized_leaf(target):
            out[path] = x
            continue
        if tuple(x.shape) != tuple(target["qvalue"].shape):
            raise ValueError(f"quantize_params: param {'/'.join(path)} has shape {tuple(x.shape)}, the quantized model "
                             f"expects {tuple(target['qvalue'].shape)}")
        fn = jax.jit(quantize_array, static_argnums=(1, 2, 3), out_shardings=flat_sh.get(path))
        out[path] = fn(x, target["qvalue"].dtype, tuple(target["qvalue"].shape), tuple(target["scale"].shape))
        if consume and isinstance(x, jax.Array):
            x.delete()
    return traverse_util.unflatten_dict(out)


def dequantize_params(params: dict) -> dict:
    """Quantized params -> float params (each quantized leaf `qvalue * scale`, in the scale's dtype):
    what merging LoRA adapters into a quantized base, or exporting it to HF, starts from."""
    def one(node):
        if is_quantized_leaf(node):
            q = qwix_api()
            return q.dequantize(q.QArray(node["qvalue"], node["scale"], qtype=jnp.dtype(node["qvalue"].dtype)))
        if isinstance(node, dict):
            return {k: one(v) for k, v in node.items()}
        return node
    return one(params)


# -- sizes --------------------------------------------------------------------------------------------
def dtype_bits(dtype) -> int:
    """Bits per element (4 for int4 / uint4)."""
    dt = jnp.dtype(dtype)
    return 4 if dt.name in ("int4", "uint4") else dt.itemsize * 8


def param_bytes(tree) -> int:
    """Bytes of a params tree (arrays or `ShapeDtypeStruct`s, boxed or not), int4 at half a byte."""
    leaves = jax.tree.leaves(nn.unbox(tree))
    return int(sum(math.ceil(int(np.prod(x.shape, dtype=np.int64)) * dtype_bits(x.dtype) / 8) for x in leaves))


# -- shardings ----------------------------------------------------------------------------------------
def fit_shardings(shardings, abstract):
    """`NamedSharding`s whose sharded dimensions divide: a dimension that does not (an int4 scale's
    `D/128` groups over a large `fsdp` axis) is replicated instead."""
    def fit(s, a):
        if not isinstance(s, jax.sharding.NamedSharding):
            return s
        spec = list(s.spec) + [None] * (len(a.shape) - len(s.spec))
        for i, axes in enumerate(spec):
            names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
            if names and a.shape[i] % math.prod(s.mesh.shape[n] for n in names):
                spec[i] = None
        return jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec(*spec))
    return jax.tree.map(fit, shardings, nn.unbox(abstract))


# -- on disk: int4 packed two to a byte ------------------------------------------------------------
def pack_int4(q: jax.Array) -> jax.Array:
    """int4 `[..., n]` (n even) -> uint8 `[..., n/2]`: element 2i in the low nibble, 2i+1 in the high."""
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4: last axis of shape {tuple(q.shape)} is odd")
    u = q.astype(jnp.int8).astype(jnp.uint8) & 0xF
    u = u.reshape(q.shape[:-1] + (q.shape[-1] // 2, 2))
    return u[..., 0] | (u[..., 1] << 4)


def unpack_int4(p: jax.Array) -> jax.Array:
    """The inverse of `pack_int4`: uint8 `[..., m]` -> int4 `[..., 2m]`."""
    lo = (p & 0xF).astype(jnp.int8)
    hi = (p >> 4).astype(jnp.int8)
    both = jnp.stack([lo, hi], axis=-1)
    both = jnp.where(both > 7, both - 16, both)
    return both.reshape(p.shape[:-1] + (p.shape[-1] * 2,)).astype(jnp.int4)


def is_quantized_checkpoint(path: str) -> bool:
    """True for a directory written by `convert.quantize` (it has `quantization.json`)."""
    return os.path.isfile(os.path.join(os.fspath(path), QUANTIZATION_FILE))


def read_quantize_config(path: str) -> QuantizeConfig:
    """The `QuantizeConfig` stored in a quantized checkpoint directory."""
    f = os.path.join(os.fspath(path), QUANTIZATION_FILE)
    with open(f) as fh:
        try:
            d = json.load(fh)
        except json.JSONDecodeError as e:
            raise ValueError(f"{f} is not valid JSON: {e}") from e
    return QuantizeConfig.from_dict(d)


def stored_leaf(path: tuple, shape, dtype) -> tuple[tuple, tuple, Any]:
    """How a params leaf is stored: `(stored path, shape, dtype)`; an int4 `qvalue` with an even last
    axis is packed into uint8 under `qvalue_packed`."""
    if path[-1] == "qvalue" and dtype_bits(dtype) == 4 and shape[-1] % 2 == 0:
        return path[:-1] + ("qvalue_packed",), tuple(shape[:-1]) + (shape[-1] // 2,), np.uint8
    return tuple(path), tuple(shape), np.dtype(dtype) if dtype_bits(dtype) != 4 else np.int8


def restore_quantized(pdir: str, abstract, shardings) -> dict:
    """The quantized params of `pdir` (a `params/` orbax checkpoint written by `convert.quantize`),
    each leaf read straight into its sharding (each device reads only its slice); int4 is unpacked
    on the device. `abstract`: the quantized model's abstract params (dict form); `shardings` the
    same tree of shardings."""
    import orbax.checkpoint as ocp
    from .jax_checkpoint import ParamsReader, leaf_name
    reader = ParamsReader(pdir)
    want = traverse_util.flatten_dict(nn.unbox(abstract))
    flat_sh = traverse_util.flatten_dict(shardings)
    stored = {p: stored_leaf(p, tuple(a.shape), a.dtype) for p, a in want.items()}
    have = set(reader.paths)
    missing = sorted(leaf_name(s[0]) for s in stored.values() if s[0] not in have)
    extra = sorted(leaf_name(p) for p in have - {s[0] for s in stored.values()})
    if missing or extra:
        raise ValueError(f"{pdir} does not hold this quantized model's params: missing {missing[:10]}, "
                         f"unexpected {extra[:10]} (was it written with another quantization.json / config.json?)")
    args = {}
    for p, (sp, shape, dtype) in stored.items():
        got, _ = reader.shape_dtype(sp)
        if got != shape:
            raise ValueError(f"{pdir}: param {leaf_name(sp)} has shape {got}, expected {shape}")
        sh = flat_sh[p]
        if sp[-1] == "qvalue_packed":
            sh = fit_shardings(sh, jax.ShapeDtypeStruct(shape, dtype))
        args[sp] = ocp.ArrayRestoreArgs(sharding=sh, dtype=dtype, global_shape=shape)
    restored = traverse_util.flatten_dict(ocp.PyTreeCheckpointer().restore(
        pdir, args=ocp.args.PyTreeRestore(restore_args=traverse_util.unflatten_dict(args))))
    out = {}
    for p, (sp, shape, dtype) in stored.items():
        x = restored[sp]
        if sp[-1] == "qvalue_packed":
            x = jax.jit(unpack_int4, out_shardings=flat_sh[p])(x)
        elif x.dtype != want[p].dtype:
            x = jax.jit(lambda a, dt=want[p].dtype: a.astype(dt), out_shardings=flat_sh[p])(x)
        out[p] = x
    return traverse_util.unflatten_dict(out)

