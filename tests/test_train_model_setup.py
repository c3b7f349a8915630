"""train.model_setup: the model and initial params of each weight source (`init_from_parts` of
an HF Llama + an HF CLIP saved here by transformers, a checkpoint directory, random init)."""
import os

import numpy as np
import pytest

from train.config import ConfigError, ModelConfig
from train.model_setup import build_model, initial_params, model_config, parts_dir, resolve_step_dir
from train.state import param_shardings, axis_rules
from train.trainer import mesh_from_config
from train.tiny import tiny_train_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    llm = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    transformers.LlamaForCausalLM(llm).save_pretrained(root / "llm")
    clip = transformers.CLIPConfig(  # a full CLIPModel, as openai/clip-vit-large-patch14-336
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=99, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           image_size=16, patch_size=4), projection_dim=16)
    transformers.CLIPModel(clip).save_pretrained(root / "clip")
    return str(root / "llm"), str(root / "clip")


@pytest.mark.parametrize("mode", ["baseline", "mini"])
def test_init_from_parts(parts, tmp_path, mode):
    cfg = tiny_train_config("unused", model={"config_json": None, "llm_path": parts[0], "vision_path": parts[1],
                                             "mode": mode, "overrides": {"compressor_size": 2, "prefusion_layers": 1}},
                            checkpoint={"dir": str(tmp_path / "run")})
    mc, tokenizer_dir = model_config(cfg.model)
    assert mc.mode == mode and tokenizer_dir == parts[0] and mc.vision_select_layer == -2
    assert mc.llm.hidden_size == 32 and mc.vision.num_layers == 3
    if mode == "mini":
        assert mc.compressor_size == 2 and mc.prefusion_layers == 1
    model = build_model(mc, cfg.model)
    from llava_mini_jax.loading import abstract_params
    shardings = param_shardings(abstract_params(model), mesh_from_config(cfg), axis_rules())
    params = initial_params(cfg.model, model, shardings, run_dir=cfg.checkpoint.dir)
    assert os.path.isdir(parts_dir(cfg.model, cfg.checkpoint.dir))  # written once, reused on the next start
    hf_llm = transformers.LlamaForCausalLM.from_pretrained(parts[0])
    np.testing.assert_array_equal(np.asarray(params["llm"]["embed_tokens"]["embedding"]),
                                  hf_llm.model.embed_tokens.weight.detach().numpy())
    assert ("compressor" in params) == (mode == "mini") and ("prefusion" in params) == (mode == "mini")
    assert params["mm_projector"]["linear_0"]["kernel"].shape == (32, 32)


def test_sources_are_exclusive_and_required():
    with pytest.raises(ConfigError, match="give one weight source"):
        ModelConfig(path="/a", config_json="/b")
    with pytest.raises(ConfigError, match="go together"):
        ModelConfig(llm_path="/a")
    with pytest.raises(ConfigError, match="no weight source"):
        model_config(ModelConfig())


def test_resolve_step_dir(tmp_path):
    for s in (2, 10):
        os.makedirs(tmp_path / str(s) / "params")
    os.makedirs(tmp_path / "11")  # an uncommitted step has no params/
    assert resolve_step_dir(str(tmp_path)) == str(tmp_path / "10")
    assert resolve_step_dir(str(tmp_path / "2")) == str(tmp_path / "2")
    with pytest.raises(FileNotFoundError):
        resolve_step_dir(str(tmp_path / "11"))
