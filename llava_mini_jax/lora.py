"""LoRA adapters on a `LlavaMini`'s linear layers (Google's qwix `LoraProvider`), optionally over an
int8 / int4 base (QLoRA).

    lora_model(model, LoraConfig(rank=128, alpha=256), quantize="int4")   -> the adapted model
    lora_params(params, abstract, rng)                                     -> base + fresh adapters
    merge_lora(params, config)                                             -> float params, merged

qwix intercepts each targeted kernel's `dot_general` and adds `(alpha / rank) * (x . A) . B` with
two more params next to the kernel: `kernel_lora_a [in, rank]` (inputs flattened: `[D, r]` for a
query projection, `[heads*head_dim, r]` for an output projection) and `kernel_lora_b [rank, out]`,
stacked on a leading `layers` axis in scanned layers, sharded by the kernel's logical names (A by
its input axis, B by its output axis). `A` starts He-uniform and `B` at zero, so the adapted model
computes exactly the base model's outputs until `B` moves. Dropout (when > 0) applies to the
layer's input on the adapter path only and needs a `dropout` rng in `apply`.

`targets` are regexes searched in the `a/b/c` paths of the float model's kernels (default: the
LLM's and the pre-fusion's attention and MLP projections); a target matching a param that is not a
dense kernel raises. With `quantize`, the base (every kernel `quantize.QuantizeConfig` covers: the
LLM's and pre-fusion's projections, LM head, embedding) is the int8 / int4 of `quantize.py` and the
adapters stay in the parameter dtype. Params are nested dicts (quantized leaves in `quantize.py`'s
dict form), so `flax.traverse_util`, shardings by path and checkpoints handle them as any params.
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from . import quantize as quantization
from .loading import abstract_params, dummy_inputs

LORA_A, LORA_B = "kernel_lora_a", "kernel_lora_b"
LORA_LEAF = r"kernel_lora_[ab]$"  # the adapters' param names (regex on `a/b/c` paths)
DEFAULT_TARGETS = (r"^(llm/decoder|prefusion)/layers(_\d+)?/(self_attn/[qkvo]_proj|mlp/(gate|up|down)_proj)/kernel$",)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """`rank`, `alpha` (the update is scaled by `alpha / rank`), `dropout` on the adapters' input,
    `targets`: regexes on the `a/b/c` paths of the kernels to adapt."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple = DEFAULT_TARGETS

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora rank={self.rank}: expected >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora dropout={self.dropout}: expected in [0, 1)")
        if not self.targets:
            raise ValueError("lora targets is empty: nothing would be adapted")
        for t in self.targets:
            try:
                re.compile(t)
            except re.error as e:
                raise ValueError(f"lora target {t!r} is not a valid regex: {e}") from None

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def is_adapter(path) -> bool:
    """True for a LoRA param path (`.../kernel_lora_a`, `.../kernel_lora_b`; tuple or `a/b/c`)."""
    s = path if isinstance(path, str) else "/".join(path)
    return re.search(LORA_LEAF, s) is not None


def target_modules(abstract, targets) -> list[str]:
    """Module paths (`a/b/c`, scanned layers under `layers`) whose kernel matches one of `targets`,
    from a float model's abstract params. ValueError for a target matching a non-kernel param or
    nothing at all."""
    regexes = [re.compile(t) for t in targets]
    paths = ["/".join(p) for p in traverse_util.flatten_dict(nn.unbox(abstract))]
    out = []
    for t in regexes:
        hits = [p for p in paths if t.search(p)]
        if not hits:
            raise ValueError(f"lora target {t.pattern!r} matches no param (e.g. {paths[:3]})")
        bad = [p for p in hits if not p.endswith("/kernel")]
        if bad:
            raise ValueError(f"lora target {t.pattern!r} matches {bad[:5]}: only dense kernels (`.../kernel`) take "
                             "adapters")
        out += [p[:-len("/kernel")] for p in hits if p[:-len("/kernel")] not in out]
    return out


def _alternation(paths) -> str:
    return "(" + "|".join(re.escape(p) for p in paths) + ")"


def rules(config: LoraConfig, modules: list[str], model_config, quantize=None) -> list:
    """qwix rules: one `LoraRule` per kind of targeted projection (carrying the base's quantization
    when `quantize`), then `quantize`'s rules for the quantized weights without adapters."""
    qc = quantization.as_config(quantize)
    lora = dict(rank=config.rank, alpha=config.alpha, dropout=config.dropout)
    out, left = [], list(modules)
    if qc is not None:
        for path, names, tile in quantization.quantized_ops(qc, model_config):
            mine = [m for m in left if re.fullmatch(path, m) and "dot_general" in names]
            if mine:
                out.append(quantization.qwix_api().LoraRule(module_path=_alternation(mine), op_names=("dot_general",),
                                         weight_qtype=qc.qtype, tile_size=tile, **lora))
                left = [m for m in left if m not in mine]
    if left:
        out.append(quantization.qwix_api().LoraRule(module_path=_alternation(left), op_names=("dot_general",), **lora))
    if qc is not None:
        out += quantization.rules(qc, model_config)
    return out


def lora_model(model: nn.Module, config: LoraConfig, quantize=None) -> nn.Module:
    """`model` (a float `LlavaMini`) with LoRA adapters on `config.targets`, over a float base or an
    int8 / int4 one (`quantize`: see `quantize.as_config`). Its `init` returns base + adapter params
    (dict form), its `apply` takes them."""
    modules = target_modules(abstract_params(model), config.targets)
    # qwix's (Q)LoRA with `quantize.QuantizedLookups` (quantized embedding gather, typed einsum)
    provider = quantization.provider_class("LoraProvider")(rules(config, modules, model.config, quantize))
    return quantization.intercept(model, provider, lora_config=config,
                                  quantize_config=quantization.as_config(quantize))


def adapter_init_fn(model: nn.Module, shardings=None):
    """One jitted `rng -> adapter params` (only the `kernel_lora_*` leaves; the base's random init is
    traced but dead code, so nothing of it is computed or held), placed in `shardings` (the adapters'
    subtree of the model's param shardings; None: default device). `model`: from `lora_model`."""

    def init(rng):
        flat = traverse_util.flatten_dict(model.init(rng, **dummy_inputs(model.config))["params"])
        return traverse_util.unflatten_dict({p: nn.unbox(v) for p, v in flat.items() if is_adapter(p)})
    return jax.jit(init, out_shardings=shardings)


def with_adapters(base: dict, adapters: dict) -> dict:
    """The adapted model's params: `base` (float, or quantized by `quantize.quantize_params`) plus the
    adapter leaves."""
    flat = traverse_util.flatten_dict(base, is_leaf=lambda _, v: quantization.is_quantized_leaf(v))
    for p, v in traverse_util.flatten_dict(adapters).items():
        flat[p] = v
    return traverse_util.unflatten_dict(flat)


def adapter_delta(a: jnp.ndarray, b: jnp.ndarray, kernel_shape, scaling: float) -> jnp.ndarray:
    """`scaling * A . B` in the kernel's layout: A `[..., in, r]`, B `[..., r, out]` -> `kernel_shape`
    (`[..., *in dims, *out dims]`, a leading `layers` axis when stacked)."""
    delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32)) * scaling
    return delta.reshape(kernel_shape)


def merge_lora(params: dict, config: LoraConfig, dtype=None) -> dict:
    """The adapted model's params as a float `LlavaMini`'s: each adapted kernel `W + (alpha/rank) A.B`
    (a quantized base dequantized first), every other quantized leaf dequantized, the adapters
    dropped. `dtype`: of the merged kernels (default: the base kernel's or its scale's)."""
    flat = traverse_util.flatten_dict(params, is_leaf=lambda _, v: quantization.is_quantized_leaf(v))
    out = {}
    for p, v in flat.items():
        if is_adapter(p):
            continue
        w = quantization.dequantize_params({"w": v})["w"]
        if p[-1] == "kernel" and p[:-1] + (LORA_A,) in flat:
            kdt = w.dtype if dtype is None else dtype
            w = (w.astype(jnp.float32) + adapter_delta(flat[p[:-1] + (LORA_A,)], flat[p[:-1] + (LORA_B,)], w.shape,
                                                       config.scaling)).astype(kdt)
        out[p] = w
    return traverse_util.unflatten_dict(out)


def adapter_paths(params_paths) -> list[tuple]:
    """Kernel paths (tuples) that carry adapters, from the paths of an adapted params tree."""
    paths = set(tuple(p) for p in params_paths)
    return sorted(p[:-1] + ("kernel",) for p in paths if p[-1] == LORA_A and p[:-1] + (LORA_B,) in paths)


def dequantize_np(qvalue: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Host-side `qvalue * scale` (float32) with the scale repeated over its groups (export only)."""
    s = np.asarray(scale, np.float32)
    for i, (q, n) in enumerate(zip(qvalue.shape, s.shape)):
        if n != q and n > 1:
            s = np.repeat(s, q // n, axis=i)
    return np.asarray(qvalue, np.float32) * s

