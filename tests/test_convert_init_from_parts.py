"""init_from_parts on tiny HF `LlamaForCausalLM` and `CLIPModel` checkpoints saved here.

Stated statistics of the fresh parts (SPEC A §13 B), checked per tensor with n elements:
U(+-b): every |w| <= b, max |w| >= 0.9 b (n >= 2000), std within 10% of b/sqrt(3), |mean| < 4 b/sqrt(3n);
N(0, 0.02^2) query: std within 25% of 0.02 (n = 256), |mean| < 4 * 0.02/sqrt(n); norms exactly 1, biases
exactly 0, pos_embed exactly the sin-cos table. LLM and CLIP tensors equal their sources bit for bit.
"""
from __future__ import annotations

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES, japply
from convert.init_from_parts import init_from_parts, main
from llava_mini_jax import load_pretrained
from llava_mini_jax.compressor import sincos_pos_embed
from llava_mini_jax.jax_checkpoint import PARAMS_DIR, ParamsReader
from test_convert_round_trip import assert_same_tensors, hf_tensors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

D, I, V, CLIP_D = 64, 128, 256, 64
PREFIX = "model.vision_tower.vision_tower."


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """`(llm_dir, clip_dir)`: a tiny Llama-3.1-style LLM (GQA, llama3 RoPE, fp16 weights, with a
    tokenizer) and a full CLIPModel, saved by transformers."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    llm_cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=D, intermediate_size=I, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rope_theta=500000.0, bos_token_id=1, eos_token_id=2,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64})
    transformers.LlamaForCausalLM(llm_cfg).to(torch.float16).save_pretrained(root / "llm")
    for f in (FIXTURES / "preprocess" / "tokenizers" / "llama31").iterdir():
        (root / "llm" / f.name).write_bytes(f.read_bytes())
    clip_cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=99, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=CLIP_D, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=8), projection_dim=16)
    transformers.CLIPModel(clip_cfg).save_pretrained(root / "clip")
    (root / "clip" / "preprocessor_config.json").write_text(json.dumps({"crop_size": 32, "size": 32}))
    return root / "llm", root / "clip"


@pytest.fixture(scope="module")
def mini(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "hf"
    init_from_parts(parts[0], parts[1], out, compressor_size=2, prefusion_layers=2, seed=3)
    return out


def _uniform_ok(a: np.ndarray, bound: float, what: str):
    a = a.astype(np.float64)
    sd = bound / math.sqrt(3)
    assert np.abs(a).max() <= bound * (1 + 1e-3), what
    if a.size >= 2000:
        assert np.abs(a).max() >= 0.9 * bound, what
    assert abs(a.std() / sd - 1) < 0.1, f"{what}: std {a.std()} vs {sd}"
    assert abs(a.mean()) < 4 * sd / math.sqrt(a.size), what


def test_llm_and_clip_are_copied_bit_for_bit(parts, mini):
    out = hf_tensors(mini)
    llm = hf_tensors(parts[0])
    clip = {PREFIX + k: v for k, v in hf_tensors(parts[1]).items()
            if k.startswith("vision_model.") and not k.endswith("position_ids")}
    assert_same_tensors({k: out[k] for k in llm}, llm)
    assert_same_tensors({k: out[k] for k in clip}, clip)
    assert {v.dtype for v in llm.values()} == {np.dtype(np.float16)}
    assert {v.dtype for k, v in out.items() if k not in clip} == {np.dtype(np.float16)}  # fresh parts: the LLM's
    fresh = sorted(set(out) - set(llm) - set(clip))
    assert len(fresh) == 4 + 10 + 2 * 9  # projector, compressor, 2 pre-fusion layers


def test_fresh_parts_have_the_stated_statistics(mini):
    out = {k: v.astype(np.float32) for k, v in hf_tensors(mini).items()}
    for k, a in out.items():
        if re.fullmatch(r"model\.prefusion_layers\.\d+\..*_proj\.weight", k) or k.startswith("model.mm_projector"):
            fan_in = a.shape[1] if a.ndim == 2 else out[k.replace(".bias", ".weight")].shape[1]
            _uniform_ok(a, 1 / math.sqrt(fan_in), k)
        elif re.fullmatch(r"model\.prefusion_layers\.\d+\..*layernorm\.weight", k):
            assert (a == 1).all(), k
    c = "model.compressor."
    q = out[c + "query"]
    assert q.shape == (4, CLIP_D) and abs(q.std() / 0.02 - 1) < 0.25 and abs(q.mean()) < 4 * 0.02 / 16
    np.testing.assert_array_equal(out[c + "pos_embed"], sincos_pos_embed(CLIP_D, 2).astype(np.float16))
    for ln in ("ln_q", "ln_kv"):
        assert (out[c + ln + ".weight"] == 1).all() and (out[c + ln + ".bias"] == 0).all()
    _uniform_ok(out[c + "attn.in_proj_weight"], math.sqrt(6 / (CLIP_D + 3 * CLIP_D)), "in_proj_weight")
    _uniform_ok(out[c + "attn.out_proj.weight"], 1 / math.sqrt(CLIP_D), "out_proj.weight")
    assert (out[c + "attn.in_proj_bias"] == 0).all() and (out[c + "attn.out_proj.bias"] == 0).all()
    # fresh pre-fusion layers are not copies of the LLM's
    assert not np.array_equal(out["model.prefusion_layers.0.self_attn.q_proj.weight"],
                              out["model.layers.0.self_attn.q_proj.weight"])


def test_config_and_side_files(parts, mini):
    config = json.loads((mini / "config.json").read_text())
    assert config["model_type"] == "llava_mini_llama" and config["architectures"] == ["LlavaMiniLlamaForCausalLM"]
    assert (config["compressor_size"], config["prefusion_layer_num"], config["mm_hidden_size"]) == (2, 2, CLIP_D)
    assert config["mm_vision_tower"] == str(parts[1]) and config["mm_projector_type"] == "mlp2x_gelu"
    # transformers-4.x form (the source was written by transformers 5)
    assert "rope_parameters" not in config and "dtype" not in config and config["torch_dtype"] == "float16"
    assert config["rope_theta"] == 500000.0 and config["rope_scaling"]["rope_type"] == "llama3"
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (mini / f).read_bytes() == (parts[0] / f).read_bytes()
    assert (mini / "preprocessor_config.json").exists()


def test_output_loads_and_runs(mini):
    model, params = load_pretrained(mini, dtype=jnp.float32)
    assert model.config.llm.rope_theta == 500000.0 and model.config.tokens_per_frame == 4
    ids = jnp.array([[1, -200, 5, 6]], jnp.int32)
    out = japply(model, params, input_ids=ids, attention_mask=jnp.ones_like(ids),
                 images=jnp.zeros((1, 1, 3, 32, 32), jnp.float32))
    assert out.logits.shape == (1, 4 - 1 + 4, V) and bool(jnp.isfinite(out.logits).all())


def test_seed_and_jax_format(parts, mini, tmp_path):
    init_from_parts(parts[0], parts[1], tmp_path / "jax", compressor_size=2, prefusion_layers=2, seed=3, fmt="jax")
    _, a = load_pretrained(mini)
    _, b = load_pretrained(tmp_path / "jax")
    jax.tree.map(np.testing.assert_array_equal, a, b)  # same seed, same values in either format
    assert ParamsReader(tmp_path / "jax" / PARAMS_DIR).shape_dtype(("compressor", "query"))[1] == np.float16
    init_from_parts(parts[0], parts[1], tmp_path / "seed4", compressor_size=2, prefusion_layers=2, seed=4)
    other = hf_tensors(tmp_path / "seed4")
    same = hf_tensors(mini)
    assert not np.array_equal(other["model.compressor.query"], same["model.compressor.query"])
    assert np.array_equal(other["model.layers.0.mlp.up_proj.weight"], same["model.layers.0.mlp.up_proj.weight"])


def test_stage1_projector_and_baseline(parts, tmp_path):
    rng = np.random.default_rng(0)
    projector = {"model.mm_projector.0.weight": rng.standard_normal((D, CLIP_D)).astype(np.float32),
                 "model.mm_projector.0.bias": rng.standard_normal(D).astype(np.float32),
                 "model.mm_projector.2.weight": rng.standard_normal((D, D)).astype(np.float32),
                 "model.mm_projector.2.bias": rng.standard_normal(D).astype(np.float32)}
    torch.save({k: torch.from_numpy(v) for k, v in projector.items()}, tmp_path / "mm_projector.bin")
    with pytest.raises(ValueError, match="--allow-pickle"):
        init_from_parts(parts[0], parts[1], tmp_path / "out", projector=str(tmp_path / "mm_projector.bin"))
    init_from_parts(parts[0], parts[1], tmp_path / "out", projector=str(tmp_path / "mm_projector.bin"),
                    allow_pickle=True, baseline=True)
    out = hf_tensors(tmp_path / "out")
    assert_same_tensors({k: out[k] for k in projector}, projector)
    assert not any("compressor" in k or "prefusion" in k for k in out)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "llava_llama" and "compressor_size" not in config
    model, _ = load_pretrained(tmp_path / "out")
    assert not model.config.is_mini


def test_bad_parts(parts, tmp_path, capsys):
    with pytest.raises(ValueError, match="model_type 'clip'; expected 'llama'"):
        init_from_parts(parts[1], parts[1], tmp_path / "out")
    with pytest.raises(ValueError, match="model_type 'llama'; expected 'clip'"):
        init_from_parts(parts[0], parts[0], tmp_path / "out")
    bad = tmp_path / "proj.safetensors"
    from safetensors.numpy import save_file
    save_file({"model.embed_tokens.weight": np.zeros((2, 2), np.float32)}, str(bad))
    assert main(["--llm", str(parts[0]), "--vision", str(parts[1]), "--out", str(tmp_path / "out"),
                 "--projector", str(bad)]) == 2
    assert "expected only model.mm_projector.* tensors" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_clip_vision_model_directory_without_the_vision_model_prefix(parts, mini, tmp_path):
    """Some `CLIPVisionModel` exports name tensors `embeddings.*`, `encoder.*`, ... without the
    `vision_model.` prefix; the result must equal the one made from the full CLIPModel."""
    from safetensors.numpy import save_file
    clip = {k[len("vision_model."):]: v for k, v in hf_tensors(parts[1]).items() if k.startswith("vision_model.")}
    (tmp_path / "vision").mkdir()
    save_file(clip, str(tmp_path / "vision" / "model.safetensors"))
    vision_cfg = json.loads((parts[1] / "config.json").read_text())["vision_config"]
    (tmp_path / "vision" / "config.json").write_text(json.dumps({**vision_cfg, "model_type": "clip_vision_model"}))
    (tmp_path / "vision" / "preprocessor_config.json").write_text(json.dumps({"crop_size": 32, "size": 32}))
    out = tmp_path / "from_vision_model"
    init_from_parts(parts[0], tmp_path / "vision", out, compressor_size=2, prefusion_layers=2, seed=3)
    got, want = hf_tensors(out), hf_tensors(mini)
    assert set(got) == set(want)
    assert_same_tensors(got, want)
