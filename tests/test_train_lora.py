"""train/lora.py: a QLoRA run trains the adapters (and what the optimizer groups name) and nothing
of the base (bit-identical after the run), and learns the synthetic image-question set the training
tests use.

The learning run: QLoRA over an int4 base (groups of 16), rank 8 on every projection of the LLM and
the pre-fusion layer stack, projector and compressor training too, 150 steps of 16 rows at 3e-3
from a random base (the base is frozen at its random init, so the LM head is a fixed random map and
the loss cannot fall far below chance: 4.17 -> 3.67; the answer is what moves). Measured held-out
answer accuracy 0.82 (float base: 0.82) against chance 0.375 (`test_train_learning.py`'s set);
asserted > 0.6.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import traverse_util

from llava_mini_jax import lora as L
from llava_mini_jax import quantize as Q
from llava_mini_jax.loading import abstract_params, param_init_fn
from train.config import ConfigError
from train.data import SyntheticImageQA
from train.lora import adapted_model
from train.loop import train
from train.model_setup import build_model, model_config, with_data_settings
from train.trainer import build_trainer
from train.tiny import tiny_train_config, write_tiny_model
from test_train_learning import answer_accuracy

STEPS = 150


def _config(tmp_path, **sections):
    return tiny_train_config(write_tiny_model(str(tmp_path)), **sections)


def test_qlora_int4_learns_the_synthetic_set(tmp_path):
    cfg = _config(tmp_path, data={"synthetic_size": 512},
                  optimizer={"groups": [{"name": "default", "match": [".*"], "lr": 3e-3}]},
                  schedule={"warmup_steps": None, "warmup_ratio": 0.03},
                  train={"max_steps": STEPS, "global_batch_size": 16},
                  lora={"rank": 8, "alpha": 16, "lr": 3e-3, "quantize_base": "int4", "group_size": 16})
    r = train(cfg)
    first, last = r.losses[1], np.mean([r.losses[s] for s in range(STEPS - 9, STEPS + 1)])
    assert last < first - 0.3, (first, last)
    mc, _ = model_config(cfg.model)
    base_model = build_model(mc, cfg.model)
    model = adapted_model(base_model, cfg.lora)
    assert Q.model_quantize_config(model).mode == "int4"
    # the optimiser holds the adapters (A and B of 7 projections x (LLM, pre-fusion)) and what the
    # groups name outside the LLM and the pre-fusion layers, nothing of the base
    trainer = build_trainer(cfg, with_data_settings(mc, cfg.data), STEPS)
    trainable = {"/".join(p) for p in trainer.plan.trainable}
    assert sum(L.is_adapter(p) for p in trainable) == 28
    assert all(L.is_adapter(p) or not p.startswith(("llm/", "prefusion/")) for p in trainable)
    # the base: the run's random init, quantized, bit-identical after the run; every B has moved
    initial = Q.quantize_params(param_init_fn(base_model)(jax.random.key(cfg.model.init_seed)), abstract_params(model))
    got = traverse_util.flatten_dict(r.state.params)
    want = traverse_util.flatten_dict(initial)
    moved = {"/".join(p) for p in want if not np.array_equal(np.asarray(got[p]), np.asarray(want[p]))}
    assert moved and not any(p.startswith(("llm/", "prefusion/")) for p in moved), sorted(moved)[:5]
    assert got[("llm", "lm_head", "qvalue")].dtype == np.dtype("int4")
    b = [np.asarray(v) for p, v in got.items() if p[-1] == L.LORA_B]
    assert len(b) == 14 and all(np.any(x) for x in b)
    held_out = SyntheticImageQA(size=128, seed=99)
    acc = answer_accuracy(model, r.state.params, [held_out[i] for i in range(128)])
    assert acc > 0.6, (acc, held_out.chance)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs lora.rank"):
        _config(tmp_path, lora={"quantize_base": "int4"})
    with pytest.raises(ConfigError, match="lora.quantize_base='int2'"):
        _config(tmp_path, lora={"rank": 4, "quantize_base": "int2"})
