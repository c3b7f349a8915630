"""llava_mini_jax.initializers: the one recipe of initial values, as the Flax modules draw it and as
`convert.init_from_parts` draws HF tensors (bounds and spreads stated in SPEC A §13 B)."""
from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from llava_mini_jax import initializers
from llava_mini_jax.loading import init_params
from llava_mini_jax.model import LlavaMini
from llava_mini_jax.tiny import tiny_config


def _uniform(a, bound, what):
    a = np.asarray(a, np.float64).ravel()
    assert np.abs(a).max() <= bound * (1 + 1e-6), what
    assert abs(a.std() / (bound / math.sqrt(3)) - 1) < 0.1, f"{what}: std {a.std()} vs U(+-{bound})"


@pytest.fixture(scope="module")
def params():
    cfg = tiny_config("mini", hidden_size=64, vision_hidden_size=64, prefusion_layers=1, compressor_size=2)
    return cfg, jax.tree.map(np.asarray, init_params(LlavaMini(cfg, scan_layers=False), jax.random.key(0)))


def test_module_initialisers(params):
    """`model.init`: HF's N(0, 0.02) kernels and zero biases, the compressor's recipe parts."""
    cfg, p = params
    d = cfg.vision.hidden_size
    for kernel in (p["prefusion"]["layers_0"]["self_attn"]["q_proj"]["kernel"], p["mm_projector"]["linear_0"]["kernel"],
                   p["llm"]["decoder"]["layers_0"]["mlp"]["down_proj"]["kernel"]):
        assert abs(kernel.std() / initializers.HF_STD - 1) < 0.15 and abs(kernel.mean()) < 0.005
    assert not p["mm_projector"]["linear_0"]["bias"].any()
    comp = p["compressor"]
    q_kernels = np.concatenate([comp[k]["kernel"].ravel() for k in ("q_proj", "k_proj", "v_proj")])
    _uniform(q_kernels, math.sqrt(6 / (4 * d)), "compressor q/k/v (the packed in_proj)")
    np.testing.assert_array_equal(comp["pos_embed"], initializers.sincos_pos_embed(d, 2))
    assert abs(comp["query"].std() / initializers.HF_STD - 1) < 0.25


def test_recipe_tensors():
    """`fresh_tensor` (the recipe) reads fan_in from HF `[out, in]` weights and is seeded per name."""
    w = initializers.fresh_tensor("model.prefusion_layers.0.mlp.down_proj.weight", (48, 256), 256, seed=3)
    _uniform(w, 1 / 16, "HF down_proj [out, in]")
    again = initializers.fresh_tensor("model.prefusion_layers.0.mlp.down_proj.weight", (48, 256), 256, seed=3)
    other = initializers.fresh_tensor("model.prefusion_layers.1.mlp.down_proj.weight", (48, 256), 256, seed=3)
    np.testing.assert_array_equal(w, again)
    assert not np.array_equal(w, other)
    bias = initializers.fresh_tensor("model.mm_projector.0.bias", (4096,), 64, seed=0)
    _uniform(bias, 1 / 8, "projector bias")
    _uniform(initializers.fresh_tensor("model.compressor.attn.in_proj_weight", (192, 64), 64, 0), math.sqrt(6 / 256),
             "in_proj")
    q = initializers.fresh_tensor("model.compressor.query", (64, 64), 64, 0)
    assert abs(q.std() / 0.02 - 1) < 0.1
    assert initializers.fan_in_of("model.mm_projector.2.bias", {"model.mm_projector.2.weight": (8, 5),
                                                                 "model.mm_projector.2.bias": (8,)}) == 5
    with pytest.raises(ValueError, match="not a part that init_from_parts creates"):
        initializers.fresh_tensor("model.layers.0.mlp.up_proj.weight", (4, 4), 4, 0)
