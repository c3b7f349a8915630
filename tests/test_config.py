"""config.py: HF dict round trips (our own dicts, the fixtures' config.json files, transformers' own config
dicts) and every validation error. Exact comparisons."""
from __future__ import annotations

import dataclasses
import json

import pytest
from transformers import LlamaConfig as HFLlamaConfig

from conftest import FIXTURES, MODEL_FIXTURES
from llava_mini_jax.config import (BUILTIN_VISION_CONFIGS, ClipVisionConfig, LlamaConfig, LlavaMiniConfig,
                                   RopeScaling, projector_layers)

TINY_CLIP = ClipVisionConfig(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4, patch_size=4,
                             image_size=16, hidden_act="gelu", layer_norm_eps=1e-6)
TINY_LLM = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                       rms_norm_eps=1e-5, rope_theta=5e5, max_position_embeddings=256, pad_token_id=0,
                       rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 64))


def _fixture_config(name):
    return json.loads((FIXTURES / name / "hf" / "config.json").read_text())


def _fixture_vision(name):
    return ClipVisionConfig.from_hf_dict(json.loads((FIXTURES / name / "hf" / "clip" / "config.json").read_text()))


def test_clip_round_trip():
    assert ClipVisionConfig.from_hf_dict(TINY_CLIP.to_hf_dict()) == TINY_CLIP
    assert ClipVisionConfig.from_hf_dict({"vision_config": TINY_CLIP.to_hf_dict()}) == TINY_CLIP


@pytest.mark.parametrize("scaling", [None, RopeScaling("default"), RopeScaling("linear", factor=2.0),
                                     RopeScaling("llama3", 8.0, 1.0, 4.0, 64)])
def test_llama_round_trip(scaling):
    cfg = dataclasses.replace(TINY_LLM, rope_scaling=scaling, tie_word_embeddings=True, head_dim=16)
    assert LlamaConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


def test_llama_from_transformers_dicts_old_and_new_rope_keys():
    """transformers 4.x writes rope_theta + rope_scaling; transformers 5 writes rope_parameters with rope_theta
    inside. Both must give the same config (the second was silently read as default rope before)."""
    old = TINY_LLM.to_hf_dict()
    new = {k: v for k, v in old.items() if k not in ("rope_theta", "rope_scaling")}
    new["rope_parameters"] = {**old["rope_scaling"], "rope_theta": 5e5}
    assert LlamaConfig.from_hf_dict(new) == LlamaConfig.from_hf_dict(old) == TINY_LLM
    hf = HFLlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, rope_theta=5e5, rms_norm_eps=1e-5,
                       max_position_embeddings=256, pad_token_id=0,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}).to_dict()
    assert LlamaConfig.from_hf_dict(hf) == TINY_LLM
    plain = LlamaConfig.from_hf_dict({**new, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    assert plain.rope_scaling is None and plain.rope_theta == 1e6


def test_llama_defaults_and_legacy_keys():
    d = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
         "rope_scaling": {"type": "linear", "factor": 3.0}}
    cfg = LlamaConfig.from_hf_dict(d)
    assert cfg.num_kv_heads == 2 and cfg.head_dim == 4 and cfg.rope_theta == 10000.0
    assert cfg.rope_scaling == RopeScaling("linear", factor=3.0) and not cfg.tie_word_embeddings


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_fixture_config_round_trip(name):
    raw = _fixture_config(name)
    cfg = LlavaMiniConfig.from_hf_dict(raw, _fixture_vision(name))
    assert cfg.is_mini == (name != "baseline")
    out = cfg.to_hf_dict()
    # every field the reference reads comes back with its value
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings",
                "tie_word_embeddings", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer",
                "mm_vision_select_feature", "mm_vision_tower", "compressor_size", "prefusion_layer_num",
                "tokenizer_model_max_length", "tokenizer_padding_side", "resolution_ratio", "model_type",
                "pad_token_id", "image_aspect_ratio"):
        if key in raw:
            assert out[key] == raw[key], key
    assert LlavaMiniConfig.from_hf_dict(out) == cfg  # through the written vision_config entry


def test_fixture_values():
    hd = LlavaMiniConfig.from_hf_dict(_fixture_config("hd"), _fixture_vision("hd"))
    assert (hd.compressor_size, hd.prefusion_layers, hd.max_length, hd.resolution_ratio) == (2, 2, 13, 2)
    assert hd.llm.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 64)
    assert (hd.tokens_per_frame, hd.num_vision_layers_used, hd.vision.num_patches) == (4, 2, 16)
    base = LlavaMiniConfig.from_hf_dict(_fixture_config("baseline"), _fixture_vision("baseline"))
    assert base.mode == "baseline" and base.tokens_per_frame == 16


def test_overrides_and_properties():
    raw = _fixture_config("std")
    cfg = LlavaMiniConfig.from_hf_dict(raw, _fixture_vision("std"), max_length=7)
    assert cfg.max_length == 7 and not hasattr(cfg, "scan_layers")  # runtime fields live on the module
    for select, used in ((-1, 3), (-2, 2), (-4, 0), (0, 0), (3, 3)):
        assert dataclasses.replace(cfg, vision_select_layer=select).num_vision_layers_used == used
    base = dataclasses.replace(cfg, mode="baseline", vision_select_feature="cls_patch")
    assert base.tokens_per_frame == 17 and not base.is_mini  # cls_patch is allowed in LLaVA-v1.5 mode
    assert dataclasses.replace(cfg, compressor_size=3).tokens_per_frame == 9


def test_builtin_clip_l_336():
    c = BUILTIN_VISION_CONFIGS["openai/clip-vit-large-patch14-336"]
    assert (c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size, c.image_size, c.patch_size) == \
        (1024, 24, 16, 4096, 336, 14)
    assert (c.hidden_act, c.layer_norm_eps, c.grid, c.num_patches) == ("quick_gelu", 1e-5, 24, 576)


def test_projector_layers():
    assert [projector_layers(t) for t in ("linear", "identity", "mlp2x_gelu", "mlp3x_gelu", "mlp12x_gelu")] == \
        [1, 0, 2, 3, 12]
    for bad in ("mlpx_gelu", "mlp0x_gelu", "mlp2x_relu", "conv", "mlp-1x_gelu"):
        with pytest.raises(ValueError, match="mm_projector_type"):
            projector_layers(bad)


def _mini(**kw):
    return LlavaMiniConfig(llm=TINY_LLM, vision=TINY_CLIP, **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(projector_type="mlp2x_swish"), "mm_projector_type='mlp2x_swish'"),
    (dict(vision_select_feature="cls_patch"), "cls_patch.*cannot feed the compressor"),
    (dict(vision_select_feature="cls"), "mm_vision_select_feature='cls'"),
    (dict(vision_select_layer=-5), "mm_vision_select_layer=-5 out of range for a 3-layer CLIP"),
    (dict(vision_select_layer=4), "mm_vision_select_layer=4 out of range"),
    (dict(mode="v2"), "mode='v2'"),
    (dict(compressor_size=0), "compressor_size=0"),
    (dict(compressor_heads=3), "divisible by 3 heads"),
])
def test_llava_mini_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        _mini(**kw)


def test_valid_edges_do_not_raise():
    _mini(vision_select_layer=-4)
    _mini(vision_select_layer=3)
    _mini(mode="baseline", vision_select_feature="cls_patch")


@pytest.mark.parametrize("change,match", [
    (dict(model_type="llama"), "model_type='llama'"),
    (dict(mm_hidden_size=64), "mm_hidden_size=64 disagrees with the vision tower width 32"),
    (dict(tokenizer_padding_side="left"), "tokenizer_padding_side='left'"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(attention_bias=True), "attention_bias=true"),
    (dict(mlp_bias=True), "mlp_bias=true"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope_scaling type 'yarn'"),
    (dict(mm_projector_type="mlp2x"), "mm_projector_type='mlp2x'"),
])
def test_from_hf_dict_errors(change, match):
    raw = {**_fixture_config("std"), **change}
    with pytest.raises(ValueError, match=match):
        LlavaMiniConfig.from_hf_dict(raw, _fixture_vision("std"))


def test_from_hf_dict_needs_a_vision_config_and_llama_fields():
    raw = _fixture_config("std")
    with pytest.raises(ValueError, match="no vision config"):
        LlavaMiniConfig.from_hf_dict(raw)
    with pytest.raises(ValueError, match=r"lacks Llama fields \['intermediate_size'\]"):
        LlavaMiniConfig.from_hf_dict({k: v for k, v in raw.items() if k != "intermediate_size"},
                                     _fixture_vision("std"))


@pytest.mark.parametrize("kw,match", [
    (dict(hidden_size=30, num_heads=4), "hidden_size 30 is not divisible by num_attention_heads 4"),
    (dict(num_heads=4, num_kv_heads=3), "not a multiple of num_key_value_heads 3"),
])
def test_llama_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        LlamaConfig(**kw)


@pytest.mark.parametrize("kw,match", [
    (dict(hidden_act="relu"), "hidden_act='relu'"),
    (dict(hidden_size=30, num_heads=4), "not divisible by num_heads"),
    (dict(image_size=30, patch_size=4), "image_size 30 is not divisible by patch_size 4"),
])
def test_clip_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        ClipVisionConfig(**kw)
