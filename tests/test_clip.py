"""clip.py against HF transformers' PyTorch `CLIPVisionModel`, built tiny with random O(1) weights in the test.

Our encoder returns one hidden state `hs[k]` (k layers run); HF returns them all. Compared for every k,
including the select layers -2 and -1, with quick_gelu and exact gelu. Tolerance: atol = rtol = 1e-4
(float32; hidden states are O(1), accumulated through up to 3 pre-LN layers).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModel

from llava_mini_jax.clip import ClipVisionEncoder
from llava_mini_jax.config import ClipVisionConfig

TOL = dict(atol=1e-4, rtol=1e-4)
LAYERS = 3
HF_KW = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4, image_size=16,
             patch_size=4, layer_norm_eps=1e-5)


@functools.lru_cache(maxsize=None)
def _hf_model(act: str):
    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(hidden_act=act, **HF_KW)).eval()
    with torch.no_grad():  # re-draw so activations are O(1): Linear N(0, 1/fan_in), embeddings N(0, 1)
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or "layrnorm.weight" in name \
                    or "layernorm.weight" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif p.ndim == 1 or "position_embedding" in name:
                p.copy_(torch.randn_like(p))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
    return model


def _vision_state(model) -> dict:
    """State dict without a `vision_model.` prefix (transformers 5 drops it, 4.x keeps it)."""
    return {k.removeprefix("vision_model."): v.detach().numpy() for k, v in model.state_dict().items()}


def _to_params(sd: dict, heads: int, scan: bool) -> dict:
    """HF CLIP state -> our params, written independently of hf_weights.py."""
    d = sd["embeddings.class_embedding"].shape[0]
    hd = d // heads
    ln = lambda p: {"scale": sd[p + ".weight"], "bias": sd[p + ".bias"]}  # noqa: E731

    def layer(i):
        pre = f"encoder.layers.{i}."
        out = {"layer_norm1": ln(pre + "layer_norm1"), "layer_norm2": ln(pre + "layer_norm2")}
        for n in ("q_proj", "k_proj", "v_proj"):
            out[n] = {"kernel": sd[pre + f"self_attn.{n}.weight"].T.reshape(d, heads, hd),
                      "bias": sd[pre + f"self_attn.{n}.bias"].reshape(heads, hd)}
        out["out_proj"] = {"kernel": sd[pre + "self_attn.out_proj.weight"].T.reshape(heads, hd, d),
                           "bias": sd[pre + "self_attn.out_proj.bias"]}
        for n in ("fc1", "fc2"):
            out[n] = {"kernel": sd[pre + f"mlp.{n}.weight"].T, "bias": sd[pre + f"mlp.{n}.bias"]}
        return out

    params = {"patch_embedding": sd["embeddings.patch_embedding.weight"].transpose(1, 2, 3, 0),
              "class_embedding": sd["embeddings.class_embedding"],
              "position_embedding": sd["embeddings.position_embedding.weight"],
              "pre_layrnorm": ln("pre_layrnorm"), "post_layernorm": ln("post_layernorm")}
    layers = [layer(i) for i in range(LAYERS)]
    if scan:
        params["layers"] = jax.tree.map(lambda *a: np.stack(a), *layers)
    else:
        params.update({f"layers_{i}": p for i, p in enumerate(layers)})
    return jax.tree.map(jnp.asarray, params)


@functools.lru_cache(maxsize=None)
def _reference(act: str):
    pixels = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():
        hs = _hf_model(act)(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hs) == LAYERS + 1
    return pixels.numpy(), [h.numpy() for h in hs]


@functools.lru_cache(maxsize=None)
def _ours(act: str, scan: bool):
    cfg = ClipVisionConfig.from_hf_dict(_hf_model(act).config.to_dict())
    module = ClipVisionEncoder(cfg, scan_layers=scan)
    params = _to_params(_vision_state(_hf_model(act)), cfg.num_heads, scan)
    fn = jax.jit(lambda p, x, k: module.apply({"params": p}, x, k), static_argnums=2)
    return module, params, fn


@pytest.mark.parametrize("act,k", [("quick_gelu", 0), ("quick_gelu", 1), ("quick_gelu", 2), ("quick_gelu", 3),
                                   ("gelu", LAYERS - 1), ("gelu", LAYERS)],
                         ids=["quick-hs0", "quick-hs1", "quick-hs2(select-2)", "quick-hs3(select-1)",
                              "gelu-select-2", "gelu-select-1"])
def test_hidden_states_match_hf(act, k):
    pixels, hs = _reference(act)
    _, params, fn = _ours(act, True)
    got = np.asarray(fn(params, jnp.asarray(pixels), k))
    assert got.shape == (2, 17, 32)
    np.testing.assert_allclose(got, hs[k], **TOL)
    if k:  # the layers really change the state (the comparison is not vacuous)
        assert np.abs(hs[k] - hs[k - 1]).max() > 0.1


def test_activation_choice_matters():
    _, q = _reference("quick_gelu")
    _, g = _reference("gelu")
    assert np.abs(q[LAYERS] - g[LAYERS]).max() > 1e-2  # same weights (seeded), different activation


def test_scanned_and_unscanned_agree():
    pixels, hs = _reference("quick_gelu")
    _, p_scan, f_scan = _ours("quick_gelu", True)
    _, p_unscan, f_unscan = _ours("quick_gelu", False)
    a = np.asarray(f_scan(p_scan, jnp.asarray(pixels), LAYERS - 1))
    b = np.asarray(f_unscan(p_unscan, jnp.asarray(pixels), LAYERS - 1))
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(b, hs[LAYERS - 1], **TOL)


def test_init_declares_every_layer_and_post_layernorm():
    """All layers and `post_layernorm` exist in the params (checkpoints round-trip) even when fewer run."""
    cfg = ClipVisionConfig.from_hf_dict(HF_KW | {"hidden_act": "quick_gelu"})
    for scan in (True, False):
        module = ClipVisionEncoder(cfg, scan_layers=scan)
        shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 3, 16, 16)), 1))["params"]
        shapes = jax.tree.map(lambda a: a.shape, nn.unbox(shapes))
        want = jax.tree.map(lambda a: a.shape, _to_params(_vision_state(_hf_model("quick_gelu")), 4, scan))
        assert shapes == want


def test_wrong_image_shape_raises():
    module, params, _ = _ours("quick_gelu", True)
    with pytest.raises(ValueError, match=r"per-view shape \(3, 8, 8\); this CLIP expects \(3, 16, 16\)"):
        module.apply({"params": params}, jnp.zeros((1, 3, 8, 8)), 1)


def test_config_from_clip_vision_config_dict():
    d = CLIPVisionConfig(hidden_act="gelu", **HF_KW).to_dict()
    cfg = ClipVisionConfig.from_hf_dict(d)
    assert cfg == ClipVisionConfig(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4, patch_size=4,
                                   image_size=16, hidden_act="gelu", layer_norm_eps=1e-5)
    assert (cfg.head_dim, cfg.grid, cfg.num_patches) == (8, 4, 16)
    assert ClipVisionConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


def test_config_from_full_clip_model_dict():
    """A `CLIPModel` config.json (what openai/clip-vit-large-patch14-336 ships): the `vision_config` entry."""
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14)
    d = CLIPConfig(vision_config=vision, text_config=dict(hidden_size=48, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=64)).to_dict()
    assert isinstance(d["vision_config"], dict)
    cfg = ClipVisionConfig.from_hf_dict(d)
    assert cfg == ClipVisionConfig()  # the CLIP-L/336 defaults, quick_gelu
    assert cfg.num_patches == 576


def test_config_missing_keys_raise():
    with pytest.raises(ValueError, match="lacks.*num_attention_heads"):
        ClipVisionConfig.from_hf_dict({"hidden_size": 32, "num_hidden_layers": 2})
