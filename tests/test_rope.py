"""rope.py against transformers' own rope code (init functions, `apply_rotary_pos_emb`) and hand values.

Tolerances: inverse frequencies rtol 4e-6 (both float32; numpy and torch `pow` differ by an ulp or two),
rotations atol 1e-6.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from llava_mini_jax.config import RopeScaling
from llava_mini_jax.rope import apply_rope, inverse_frequencies, rope_angles

LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=64)


def _hf_inv_freq(head_dim, theta, scaling):
    scaling = None if scaling is None else dict(scaling)  # transformers writes rope_theta into the dict it gets
    cfg = HFLlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, rope_theta=theta, rope_scaling=scaling,
                        max_position_embeddings=16384)
    if scaling is None:
        inv, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    else:
        inv, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg, "cpu")
    return inv.numpy()


@pytest.mark.parametrize("head_dim", [8, 64, 128])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0}, LLAMA3,
                                     {**LLAMA3, "factor": 32.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
                                      "original_max_position_embeddings": 8192}],
                         ids=["default", "linear", "llama3-orig64", "llama3-8192"])
def test_inverse_frequencies_match_transformers(head_dim, theta, scaling):
    ours = inverse_frequencies(head_dim, theta, RopeScaling.from_hf_dict(scaling))
    want = _hf_inv_freq(head_dim, theta, scaling)
    assert ours.dtype == np.float32 and ours.shape == (head_dim // 2,)
    np.testing.assert_allclose(ours, want, rtol=4e-6, atol=0)


def test_llama3_scaling_exercises_all_three_bands():
    """The llama3 comparison above is only meaningful if kept, blended and divided frequencies all occur."""
    base = inverse_frequencies(64, 10000.0)
    scaled = inverse_frequencies(64, 10000.0, RopeScaling.from_hf_dict(LLAMA3))
    ratio = base / scaled
    assert np.sum(ratio == 1.0) >= 1  # high frequencies kept
    assert np.sum(np.isclose(ratio, 8.0, rtol=1e-6)) >= 1  # low frequencies divided by factor
    assert np.sum((ratio > 1.0 + 1e-6) & (ratio < 8.0 - 1e-3)) >= 1  # blended band


def test_inverse_frequencies_hand_values():
    # head_dim 4, theta 100: 1 / 100^(0/4), 1 / 100^(2/4) = [1, 0.1]
    np.testing.assert_allclose(inverse_frequencies(4, 100.0), [1.0, 0.1], rtol=1e-7)
    np.testing.assert_allclose(inverse_frequencies(4, 100.0, RopeScaling("linear", factor=2.0)), [0.5, 0.05],
                               rtol=1e-7)
    # default rope_type object == no scaling
    np.testing.assert_array_equal(inverse_frequencies(8, 1e4, RopeScaling("default")), inverse_frequencies(8, 1e4))


def test_rope_scaling_legacy_type_key():
    s = RopeScaling.from_hf_dict({"type": "linear", "factor": 2.0})
    assert s == RopeScaling("linear", factor=2.0)
    assert RopeScaling.from_hf_dict(None) is None
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        RopeScaling.from_hf_dict({"rope_type": "yarn", "factor": 2.0})


def test_apply_rope_matches_transformers():
    rng = np.random.default_rng(0)
    b, t, h, hd = 2, 7, 3, 16
    x = rng.standard_normal((b, t, h, hd)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4, 5, 6], [5, 9, 1, 1, 30, 2, 100]])
    inv = inverse_frequencies(hd, 10000.0, RopeScaling.from_hf_dict(LLAMA3))
    cos, sin = rope_angles(jnp.asarray(positions), inv)
    ours = np.asarray(apply_rope(jnp.asarray(x), cos, sin))
    # HF: cos/sin [B, T, hd] from cat(freqs, freqs); q as [B, H, T, hd]
    freqs = torch.from_numpy(positions).float()[..., None] * torch.from_numpy(inv)[None, None]
    emb = torch.cat([freqs, freqs], dim=-1)
    qt = torch.from_numpy(x).transpose(1, 2)
    want, _ = apply_rotary_pos_emb(qt, qt, emb.cos(), emb.sin())
    np.testing.assert_allclose(ours, want.transpose(1, 2).numpy(), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(cos), emb.cos().numpy(), atol=1e-6)


def test_apply_rope_hand_values():
    # head_dim 2: inv_freq = [1]; x = (a, b) at position p rotates by angle p: (a cos p - b sin p, b cos p + a sin p)
    inv = inverse_frequencies(2, 10000.0)
    assert inv.tolist() == [1.0]
    x = jnp.asarray(np.array([1.0, 2.0], np.float32).reshape(1, 1, 1, 2).repeat(3, axis=1))
    cos, sin = rope_angles(jnp.array([[0, 1, 3]]), inv)
    out = np.asarray(apply_rope(x, cos, sin))[0, :, 0]
    want = [[1.0, 2.0]] + [[math.cos(p) - 2 * math.sin(p), 2 * math.cos(p) + math.sin(p)] for p in (1, 3)]
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(1)
    hd = 8
    q, k = (jnp.asarray(rng.standard_normal((1, 1, 1, hd)).astype(np.float32)) for _ in range(2))
    inv = inverse_frequencies(hd, 10000.0)

    def score(m, n):
        cq, sq = rope_angles(jnp.array([[m]]), inv)
        ck, sk = rope_angles(jnp.array([[n]]), inv)
        return float(jnp.sum(apply_rope(q, cq, sq) * apply_rope(k, ck, sk)))

    np.testing.assert_allclose(score(3, 1), score(12, 10), atol=1e-5)
    np.testing.assert_allclose(score(0, 0), float(jnp.sum(q * k)), atol=1e-6)
    assert abs(score(3, 1) - score(3, 2)) > 1e-3


def test_apply_rope_keeps_dtype_and_computes_in_float32():
    x = jnp.ones((1, 2, 1, 4), jnp.bfloat16)
    cos, sin = rope_angles(jnp.array([[0, 1]]), inverse_frequencies(4, 10000.0))
    out = apply_rope(x, cos, sin)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out[0, 0, 0], np.float32), [1, 1, 1, 1])
