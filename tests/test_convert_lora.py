"""convert/lora.py: a QLoRA (int4) training step exported merged (through `convert.jax_to_hf`, the
base dequantized) loads as a plain model computing the adapted model's logits (1e-5); exported as
a PEFT adapter, HF `peft` applies it to a tiny `LlamaForCausalLM` built from the same LLM weights
and gets our logits (1e-4).

The step directories are written here as training writes them (orbax params of the adapted model
next to `config.json`, the run's `train_config.json` one level up), with adapters drawn at random
(`B` nonzero, so the update matters).
"""
from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from flax import traverse_util

from convert.lora import export_merged, export_peft, main
from llava_mini_jax import load_pretrained
from llava_mini_jax import lora as L
from llava_mini_jax import quantize as Q
from llava_mini_jax.hf_weights import params_to_hf
from llava_mini_jax.loading import abstract_params, init_params
from llava_mini_jax.model import LlavaMini
from llava_mini_jax.tiny import tiny_config, write_config

LORA = L.LoraConfig(rank=4, alpha=8)
IDS = np.array([[1, 5, 9, 7, 9, 11, 3, 2], [1, 4, 3, 8, 2, 6, 0, 0]], np.int32)
MASK = np.array([[1] * 8, [1] * 6 + [0, 0]], np.int32)


def _step_dir(root, mode: str, quantize=None):
    """`(step directory, adapted model, adapted params)` of a tiny model with random adapters."""
    cfg = tiny_config(mode, hidden_size=32)
    model = LlavaMini(cfg)
    params = jax.jit(lambda k: init_params(model, k))(jax.random.key(0))
    lm = L.lora_model(model, LORA, quantize)
    base = params if quantize is None else Q.quantize_params(params, abstract_params(lm))
    adapters = L.adapter_init_fn(lm)(jax.random.key(1))
    adapters = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), adapters)
    adapted = L.with_adapters(base, adapters)
    step = root / "run" / "7"
    write_config(step, cfg)
    checkpointer = ocp.StandardCheckpointer()  # orbax's default layout (OCDBT), as a training run's params item
    checkpointer.save((step / "params").absolute(), adapted)
    checkpointer.wait_until_finished()
    checkpointer.close()
    (root / "run" / "train_config.json").write_text(json.dumps({"lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0}}))
    return str(step), lm, adapted


def _logits(model, params, images=None):
    return np.asarray(jax.jit(lambda p: model.apply({"params": p}, IDS, MASK, images).logits)(params))


def test_merged_export_loads_as_the_adapted_model(tmp_path):
    step, lm, adapted = _step_dir(tmp_path, "mini", Q.QuantizeConfig("int4", group_size=8))
    images = np.asarray(jax.random.normal(jax.random.key(3), (2, 1, 3, 16, 16)))
    ids = IDS.copy()
    ids[:, 2] = -200
    want = np.asarray(jax.jit(lambda p: lm.apply({"params": p}, ids, MASK, images).logits)(adapted))
    out = export_merged(step, tmp_path / "merged")
    model, params = load_pretrained(out)
    got = np.asarray(jax.jit(lambda p: model.apply({"params": p}, ids, MASK, images).logits)(params))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_peft_adapter_loads_into_hf_llama(tmp_path):
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM
    step, lm, adapted = _step_dir(tmp_path, "baseline")  # text only: the LLM alone
    out = export_peft(step, tmp_path / "peft", base_model="tiny-llama")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"])
    c = lm.config.llm
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                                      intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
                                      num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                                      rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
                                      max_position_embeddings=c.max_position_embeddings,
                                      tie_word_embeddings=False)).eval()
    base = {k: v for k, v in traverse_util.flatten_dict(adapted).items() if not L.is_adapter(k)}
    tensors = dict(params_to_hf(jax.tree.map(np.asarray, traverse_util.unflatten_dict(base)), lm.config))
    state = {k: torch.from_numpy(np.ascontiguousarray(tensors[k])) for k in hf.state_dict()}
    hf.load_state_dict(state)
    peft_model = PeftModel.from_pretrained(hf, out).eval()
    with torch.no_grad():
        got = peft_model(input_ids=torch.from_numpy(IDS).long(), attention_mask=torch.from_numpy(MASK).long()).logits
    want = _logits(lm, adapted)
    real = MASK.astype(bool)
    np.testing.assert_allclose(got.numpy()[real], want[real], atol=1e-4, rtol=1e-4)
    with torch.no_grad(), peft_model.disable_adapter():  # the base alone: our base, not the adapted model
        plain = peft_model(input_ids=torch.from_numpy(IDS).long(), attention_mask=torch.from_numpy(MASK).long()).logits
    np.testing.assert_allclose(plain.numpy()[real], _logits(LlavaMini(lm.config), adapted)[real], atol=1e-4,
                               rtol=1e-4)
    assert np.abs(plain.numpy()[real] - want[real]).max() > 1e-2
    # an adapter directory is replaced with --overwrite only; never written inside the step
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_peft(step, out)
    assert export_peft(step, out, overwrite=True) == out
    with pytest.raises(ValueError, match="inside the source"):
        export_peft(step, f"{step}/peft")


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "7").mkdir()
    assert main(["--src", str(tmp_path / "7"), "--peft", str(tmp_path / "out")]) == 2
    assert "pass --alpha" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
