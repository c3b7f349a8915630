"""quantize.py: weight-only int8 / int4 against float32 on the reference fixtures, hand-worked
quantized values, the layout read from shapes, int4 packing, sizes (the real 8B model from abstract
shapes), scanned / unscanned / sharded / bf16 loading, errors.

Bounds on the fixtures (random tiny weights, float32; measured on std: int8 relative logits error
0.017, top-1 agreement 1.0; int4 in groups of 16: 0.21, 0.80 — `benchmarks/quantization.py`
reports every fixture): int8 relative error < 0.04 and top-1 agreement >= 0.95; int4 < 0.35 and
>= 0.6. Equalities between layouts (scanned vs not, sharded vs one device) at 1e-5.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import FIXTURES, fixture_data, fixture_model
from llava_mini_jax import load_pretrained
from llava_mini_jax import quantize as Q
from llava_mini_jax.loading import abstract_params
from llava_mini_jax.sharding import make_mesh

SAME = dict(atol=1e-5, rtol=1e-5)
BOUNDS = {"int8": (0.04, 0.95), "int4": (0.35, 0.6)}


@functools.lru_cache(maxsize=None)
def _loaded(config: Q.QuantizeConfig, scan_layers: bool = True):
    """`load_pretrained` of the std fixture, quantized (shared by the tests: one compile each)."""
    return load_pretrained(FIXTURES / "std" / "hf", quantize=config, scan_layers=scan_layers)


@functools.lru_cache(maxsize=None)
def _forward(model):
    return jax.jit(lambda p, ids, mask, images: model.apply({"params": p}, ids, mask, images))


def _logits(model, params, name: str):
    _, inputs, _, _ = fixture_data(name)
    out = _forward(model)(params, inputs["input_ids"], inputs["attention_mask"], inputs["images"])
    return np.asarray(out.logits), np.asarray(out.attention_mask, bool)


@pytest.fixture(scope="module")
def std_float():
    model, params = fixture_model("std")
    return model, params, _logits(model, params, "std")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_fixture_logits_within_bounds(std_float, mode):
    _, _, (ref, valid) = std_float
    got, _ = _logits(*_loaded(Q.QuantizeConfig(mode, group_size=16)), "std")
    f, q = ref[valid], got[valid]
    rel = np.linalg.norm(q - f) / np.linalg.norm(f)
    agree = (q.argmax(-1) == f.argmax(-1)).mean()
    max_rel, min_agree = BOUNDS[mode]
    assert rel < max_rel and agree >= min_agree, (mode, rel, agree)
    assert rel > 1e-4  # the weights really are quantized


def test_hand_worked_int8_and_int4_values():
    x = jnp.array([[-1.0, 0.25], [2.0, 0.5], [0.5, -0.75], [4.0, 1.0]], jnp.float32)  # [in 4, out 2]
    # int8, one scale per output column: absmax / 127.5 (qwix's symmetric bound, qmax + 0.5), values
    # rounded and clipped to [-128, 127]
    q8 = Q.quantize_array(x, jnp.int8, (4, 2), (1, 2))
    np.testing.assert_allclose(np.asarray(q8["scale"]), [[4 / 127.5, 1 / 127.5]], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(q8["qvalue"]), [[-32, 32], [64, 64], [16, -96], [127, 127]])
    # int4 in groups of 2 inputs: scale = group absmax / 7.5, values clipped to [-8, 7]
    q4 = Q.quantize_array(x, jnp.int4, (4, 2), (2, 2))
    np.testing.assert_allclose(np.asarray(q4["scale"]), [[2 / 7.5, 0.5 / 7.5], [4 / 7.5, 1 / 7.5]], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(q4["qvalue"].astype(jnp.int8)), [[-4, 4], [7, 7], [1, -6], [7, 7]])
    assert q4["qvalue"].dtype == jnp.int4
    back = np.asarray(Q.dequantize_params({"k": q4})["k"])
    step = np.repeat(np.asarray(q4["scale"]), 2, axis=0)
    assert (np.abs(back - np.asarray(x)) <= 0.5 * step + 1e-6).all()  # within half a step of its group


def test_layout_read_from_shapes():
    assert Q.layout((32, 4, 8), (1, 4, 8)) == ([1, 2], {})  # int8 q_proj: per output channel
    assert Q.layout((32, 4, 8), (2, 4, 8)) == ([1, 2], {0: 16})  # int4: groups of 16 inputs
    assert Q.layout((2, 4, 8, 32), (2, 4, 1, 32)) == ([0, 1, 3], {})  # stacked o_proj: per layer, head, output
    with pytest.raises(ValueError, match="not divisible"):
        Q.layout((30,), (4,))
    assert Q.group_size(4096, 128) == 128 and Q.group_size(64, 128) == 64 and Q.group_size(96, 64) == 48


def test_int4_packing_round_trip():
    q = jnp.arange(-8, 8, dtype=jnp.int8).reshape(2, 8).astype(jnp.int4)
    packed = Q.pack_int4(q)
    assert packed.dtype == jnp.uint8 and packed.shape == (2, 4)
    assert int(packed[0, 0]) == (0x8 | (0x9 << 4))  # -8 -> 0x8 low nibble, -7 -> 0x9 high nibble
    np.testing.assert_array_equal(np.asarray(Q.unpack_int4(packed).astype(jnp.int8)), np.asarray(q.astype(jnp.int8)))
    with pytest.raises(ValueError, match="odd"):
        Q.pack_int4(jnp.zeros((3,), jnp.int4))


def test_param_bytes_counts_int4_as_half_a_byte():
    tree = {"a": jax.ShapeDtypeStruct((10, 3), jnp.int4), "b": {"c": jnp.zeros((4,), jnp.bfloat16)},
            "d": jax.ShapeDtypeStruct((5,), jnp.int8)}
    assert Q.param_bytes(tree) == 15 + 8 + 5


def test_8b_parameter_bytes_meet_the_goals():
    """Llama-3.1-8B LLaVA-Mini + CLIP-L/336 from abstract shapes (nothing allocated), bf16 scales."""
    from llava_mini_jax.config import ClipVisionConfig, LlavaMiniConfig
    from llava_mini_jax.flops import LLAMA31_8B
    from llava_mini_jax.model import LlavaMini
    mc = LlavaMiniConfig(llm=LLAMA31_8B, vision=ClipVisionConfig(), mode="mini", projector_type="mlp2x_gelu",
                         vision_select_layer=-2, compressor_size=1, prefusion_layers=4, vision_tower="clip")
    model = LlavaMini(mc, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    size = {k: Q.param_bytes(abstract_params(Q.quantize_model(model, c))) / 1e9 for k, c in {
        "int8": Q.QuantizeConfig("int8"), "int8+clip": Q.QuantizeConfig("int8", vision=True),
        "int4": Q.QuantizeConfig("int4")}.items()}
    bf16 = Q.param_bytes(abstract_params(model)) / 1e9
    assert 18.0 < bf16 < 19.0, bf16
    assert size["int8+clip"] <= 9.5 and size["int4"] <= 5.5, size
    assert size["int8"] < 9.6, size  # CLIP in bf16: 9.56 GB (8.91 GiB)


def test_scanned_and_unscanned_quantized_models_agree(std_float):
    qc = Q.QuantizeConfig("int4", group_size=16)
    np.testing.assert_allclose(_logits(*_loaded(qc), "std")[0], _logits(*_loaded(qc, False), "std")[0], **SAME)


def test_sharded_quantized_load_matches_one_device():
    qc = Q.QuantizeConfig("int4", group_size=16)
    one = _loaded(qc)
    mesh = make_mesh((1, 4, 2))
    model, params = load_pretrained(FIXTURES / "std" / "hf", quantize=qc, mesh=mesh)
    q = params["llm"]["decoder"]["layers"]["mlp"]["gate_proj"]["kernel"]
    assert tuple(q["qvalue"].sharding.spec) == (None, "fsdp", "tensor")  # as the float kernel [layers, embed, mlp]
    assert q["scale"].shape == (2, 4, 128) and tuple(q["scale"].sharding.spec) == (None, "fsdp", "tensor")
    np.testing.assert_allclose(_logits(model, params, "std")[0], _logits(*one, "std")[0], **SAME)


def test_bf16_params_keep_float32_logits(std_float):
    _, _, (ref, valid) = std_float
    model, params = load_pretrained(FIXTURES / "std" / "hf", dtype=jnp.bfloat16, quantize="int8")
    scale = params["llm"]["decoder"]["layers"]["self_attn"]["q_proj"]["kernel"]["scale"]
    assert scale.dtype == jnp.bfloat16 and params["llm"]["lm_head"]["qvalue"].dtype == jnp.int8
    got, _ = _logits(model, params, "std")
    assert got.dtype == np.float32
    assert np.linalg.norm(got[valid] - ref[valid]) / np.linalg.norm(ref[valid]) < 0.05


def test_what_is_quantized():
    model, _ = fixture_model("std")
    flat = traverse_util.flatten_dict(abstract_params(Q.quantize_model(model, Q.QuantizeConfig("int8"))),
                                      is_leaf=lambda _, v: Q.is_quantized_leaf(v))
    quantized = sorted("/".join(p) for p, v in flat.items() if Q.is_quantized_leaf(v))
    assert quantized == sorted(
        [f"{s}/layers/{m}/kernel" for s in ("llm/decoder", "prefusion")
         for m in ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/o_proj",
                   "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")] + ["llm/lm_head", "llm/embed_tokens/embedding"])
    vision = traverse_util.flatten_dict(abstract_params(Q.quantize_model(model, Q.QuantizeConfig("int8", vision=True))),
                                        is_leaf=lambda _, v: Q.is_quantized_leaf(v))
    assert sum(Q.is_quantized_leaf(v) and p[0] == "vision_tower" for p, v in vision.items()) == 6


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="int3"):
        Q.as_config("int3")
    with pytest.raises(ValueError, match="group_size=0"):
        Q.QuantizeConfig("int4", group_size=0)
    with pytest.raises(ValueError, match="unknown keys"):
        Q.QuantizeConfig.from_dict({"mode": "int8", "bits": 8})
    model, params = fixture_model("std")
    sh = jax.tree.map(lambda a: a.sharding, params)
    with pytest.raises(ValueError, match="mesh=, not shardings="):
        load_pretrained(FIXTURES / "std" / "hf", quantize="int8", shardings=sh)
