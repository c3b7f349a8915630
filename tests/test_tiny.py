"""llava_mini_jax.tiny: the shared tiny-model builder writes checkpoints `load_pretrained` reads back
exactly (weights, config, generation settings), and a config.json training can start from."""
from __future__ import annotations

import json

import jax
import numpy as np

from llava_mini_jax import GenerationConfig, LlavaMiniConfig, load_pretrained
from llava_mini_jax.loading import init_params
from llava_mini_jax.model import LlavaMini
from llava_mini_jax.tiny import TOWER_DIR, tiny_config, write_config, write_hf_checkpoint


def test_hf_checkpoint_round_trip(tmp_path):
    cfg = tiny_config("mini", vocab_size=50, prefusion_layers=1, pad_token_id=0)
    params = jax.tree.map(np.asarray, init_params(LlavaMini(cfg), jax.random.key(1)))
    gen = GenerationConfig(eos_token_ids=(2, 3), pad_token_id=0)
    d = write_hf_checkpoint(tmp_path / "ckpt", cfg, params, gen)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["mm_vision_tower"] == TOWER_DIR
    model, loaded = load_pretrained(d)
    assert model.config == cfg and model.generation == gen
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded), params)


def test_sizes_are_knobs_and_config_json_parses(tmp_path):
    cfg = tiny_config("mini", hidden_size=64, num_layers=3, vision_layers=1, image_size=32, compressor_size=2)
    assert (cfg.llm.hidden_size, cfg.llm.intermediate_size, cfg.llm.num_layers) == (64, 128, 3)
    assert (cfg.vision.num_layers, cfg.vision.num_patches, cfg.tokens_per_frame) == (1, 64, 4)
    path = write_config(tmp_path, cfg, GenerationConfig((2,)))
    d = json.loads(open(path).read())
    assert LlavaMiniConfig.from_hf_dict(d) == cfg and GenerationConfig.from_hf_dict(d).eos_token_ids == (2,)
