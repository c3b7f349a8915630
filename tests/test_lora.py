"""lora.py: adapters leave the model's outputs unchanged at initialisation (float, int8 and int4
bases: bit for bit), merging equals the adapted model (1e-5), targets, adapter shapes and logical
names, errors."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from llava_mini_jax import lora as L
from llava_mini_jax import quantize as Q
from llava_mini_jax.loading import abstract_params, init_params
from llava_mini_jax.model import LlavaMini
from llava_mini_jax.tiny import tiny_config

SAME = dict(atol=1e-5, rtol=1e-5)
CFG = tiny_config("mini", hidden_size=32)
IDS = jnp.array([[1, 5, -200, 7, 9, 11], [1, -200, 3, 4, 0, 0]], jnp.int32)
MASK = jnp.array([[1] * 6, [1, 1, 1, 1, 0, 0]], jnp.int32)
IMAGES = jax.random.normal(jax.random.key(1), (2, 1, 3, 16, 16))
LORA = L.LoraConfig(rank=4, alpha=8)


@functools.lru_cache(maxsize=None)
def _forward(model):
    return jax.jit(lambda p: model.apply({"params": p}, IDS, MASK, IMAGES).logits)


def _logits(model, params):
    return np.asarray(_forward(model)(params))


@functools.lru_cache(maxsize=None)
def _base():
    model = LlavaMini(CFG)
    return model, jax.jit(lambda k: init_params(model, k))(jax.random.key(0))


@functools.lru_cache(maxsize=None)
def _adapted(quantize=None):
    """`(adapted model, its base params, fresh adapters, the plain (maybe quantized) base model)`."""
    model, params = _base()
    lm = L.lora_model(model, LORA, quantize)
    base_params = params if quantize is None else Q.quantize_params(params, abstract_params(lm))
    plain = model if quantize is None else Q.quantize_model(model, quantize)
    return lm, base_params, L.adapter_init_fn(lm)(jax.random.key(3)), plain


INT4 = Q.QuantizeConfig("int4", group_size=8)


@pytest.mark.parametrize("quantize", [None, "int8", INT4])
def test_outputs_at_init_equal_the_base_model(quantize):
    lm, base_params, adapters, plain = _adapted(quantize)
    want = _logits(plain, base_params)
    np.testing.assert_array_equal(_logits(lm, L.with_adapters(base_params, adapters)), want)
    flat = traverse_util.flatten_dict(adapters)
    assert all(not np.any(np.asarray(v)) for p, v in flat.items() if p[-1] == L.LORA_B)  # B starts at zero
    assert all(np.any(np.asarray(v)) for p, v in flat.items() if p[-1] == L.LORA_A)


def test_merged_params_compute_the_adapted_model():
    lm, base_params, adapters, plain = _adapted(INT4)
    adapters = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(5), a.shape), adapters)
    adapted = L.with_adapters(base_params, adapters)
    want = _logits(lm, adapted)
    assert np.abs(want - _logits(plain, base_params)).max() > 1e-3  # the adapters do something
    np.testing.assert_allclose(_logits(_base()[0], L.merge_lora(adapted, LORA)), want, **SAME)


def test_adapter_shapes_and_logical_names():
    model, _ = _base()
    boxed = abstract_params(L.lora_model(model, LORA))
    flat = traverse_util.flatten_dict(boxed, is_leaf=lambda _, v: isinstance(v, nn.LogicallyPartitioned))
    q = ("llm", "decoder", "layers", "self_attn", "q_proj")
    o = ("llm", "decoder", "layers", "self_attn", "o_proj")
    assert flat[q + (L.LORA_A,)].value.shape == (2, 32, 4)  # [layers, D, r]
    assert flat[q + (L.LORA_B,)].value.shape == (2, 4, 32)  # [layers, r, heads * head_dim]
    assert flat[o + (L.LORA_A,)].value.shape == (2, 32, 4)  # [layers, heads * head_dim, r]
    assert flat[q + (L.LORA_A,)].names == ("layers", "embed", None)  # sharded like the kernel's input axis
    assert flat[q + (L.LORA_B,)].names == ("layers", None, "heads")  # and its output axis
    adapted = sorted("/".join(p[:-1]) for p in flat if L.is_adapter(p) and p[-1] == L.LORA_A)
    assert len(adapted) == 14 and all(p.startswith(("llm/decoder/", "prefusion/")) for p in adapted)


def test_targets():
    model, _ = _base()
    abstract = abstract_params(model)
    assert L.target_modules(abstract, [r"llm/.*/q_proj/kernel$"]) == ["llm/decoder/layers/self_attn/q_proj"]
    with pytest.raises(ValueError, match="only dense kernels"):
        L.target_modules(abstract, [r"llm/lm_head"])
    with pytest.raises(ValueError, match="matches no param"):
        L.target_modules(abstract, [r"^nothing$"])
    with pytest.raises(ValueError, match="rank=0"):
        L.LoraConfig(rank=0)
    with pytest.raises(ValueError, match="not a valid regex"):
        L.LoraConfig(targets=("(",))


def test_dequantize_np_repeats_group_scales():
    q = np.array([[1, -2], [3, 4], [5, 6], [-7, 7]], np.int8)
    s = np.array([[0.5, 1.0], [2.0, 0.25]], np.float32)  # groups of 2 rows
    np.testing.assert_array_equal(L.dequantize_np(q, s), [[0.5, -2.0], [1.5, 4.0], [10.0, 1.5], [-14.0, 1.75]])
