"""llama.py against HF transformers' PyTorch `LlamaForCausalLM`, built tiny with random O(1) weights in the test.

Variants: MHA and GQA (4 heads / 2 kv heads), rope default / linear / llama3 (original_max_position_embeddings
64 with head_dim 8, so kept, blended and divided frequencies all occur at short lengths), tied embeddings; a
right-padded batch with an attention mask. Tolerances: logits and hidden states vs HF atol = rtol = 1e-4
(float32); our own layouts (scan/remat, cache) against each other atol = rtol = 1e-5.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from llava_mini_jax.config import LlamaConfig
from llava_mini_jax.llama import (AttentionMask, DecoderStack, LlamaLM, causal_by_lengths, causal_mask,
                                 resolve_attention_impl, write_cache, write_layer)

TOL = dict(atol=1e-4, rtol=1e-4)
SELF = dict(atol=1e-5, rtol=1e-5)
B, T, V = 2, 12, 64
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
VARIANTS = {
    "mha-default": dict(num_key_value_heads=4, rope_scaling=None),
    "gqa-linear": dict(num_key_value_heads=2, rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "gqa-llama3": dict(num_key_value_heads=2, rope_scaling=LLAMA3),
    "mha-llama3-tied": dict(num_key_value_heads=4, rope_scaling=LLAMA3, tie_word_embeddings=True),
}


@functools.lru_cache(maxsize=None)
def _hf(variant: str):
    kw = dict(VARIANTS[variant])
    kw["rope_scaling"] = None if kw["rope_scaling"] is None else dict(kw["rope_scaling"])
    cfg = HFLlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128,
                        pad_token_id=0, **kw)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # O(1) activations: Linear N(0, 1/fan_in), norms 1 + N(0, 0.1^2), embeddings N(0, 1)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    return model


def _config(variant: str) -> LlamaConfig:
    return LlamaConfig.from_hf_dict(_hf(variant).config.to_dict())


def _to_params(model, cfg: LlamaConfig, scan: bool) -> dict:
    """HF state -> LlamaLM params, written independently of hf_weights.py."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    d, hd = cfg.hidden_size, cfg.head_dim

    def layer(i):
        pre = f"model.layers.{i}."
        w = lambda n: sd[pre + n + ".weight"]  # noqa: E731
        return {"input_layernorm": {"scale": w("input_layernorm")},
                "post_attention_layernorm": {"scale": w("post_attention_layernorm")},
                "self_attn": {"q_proj": {"kernel": w("self_attn.q_proj").T.reshape(d, cfg.num_heads, hd)},
                              "k_proj": {"kernel": w("self_attn.k_proj").T.reshape(d, cfg.num_kv_heads, hd)},
                              "v_proj": {"kernel": w("self_attn.v_proj").T.reshape(d, cfg.num_kv_heads, hd)},
                              "o_proj": {"kernel": w("self_attn.o_proj").T.reshape(cfg.num_heads, hd, d)}},
                "mlp": {n: {"kernel": w(f"mlp.{n}").T} for n in ("gate_proj", "up_proj", "down_proj")}}

    layers = [layer(i) for i in range(cfg.num_layers)]
    decoder = ({"layers": jax.tree.map(lambda *a: np.stack(a), *layers)} if scan
               else {f"layers_{i}": p for i, p in enumerate(layers)})
    params = {"embed_tokens": {"embedding": sd["model.embed_tokens.weight"]}, "decoder": decoder,
              "norm": {"scale": sd["model.norm.weight"]}}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = sd["lm_head.weight"].T
    return jax.tree.map(jnp.asarray, params)


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, V, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, 8:] = 0  # right padded
    ids[1, 8:] = 0
    return ids, mask


@functools.lru_cache(maxsize=None)
def _forward_fn(module: LlamaLM):
    def fwd(params, ids, valid):
        def f(m):
            pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
            return m(m.embed(ids), pos, causal_mask(valid))[0]
        return nn.apply(f, module)({"params": params})
    return jax.jit(fwd)


def _logits(module, params, ids, mask):
    return np.asarray(_forward_fn(module)(params, jnp.asarray(ids), jnp.asarray(mask, bool)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(variant):
    model, cfg = _hf(variant), _config(variant)
    ids, mask = _batch()
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    module = LlamaLM(cfg)
    params = _to_params(model, cfg, scan=True)
    def touch_all(m, ids):  # the LM's call takes embeddings: init through `embed` too
        return m(m.embed(ids), jnp.zeros(ids.shape, int), causal_mask(jnp.ones(ids.shape, bool)))
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 2), int), method=touch_all))["params"]
    assert jax.tree.map(lambda a: a.shape, nn.unbox(shapes)) == jax.tree.map(lambda a: a.shape, params)
    got = _logits(module, params, ids, mask)
    assert got.dtype == np.float32
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], **TOL)
    if cfg.tie_word_embeddings:
        assert "lm_head" not in params


def test_config_reads_rope_and_gqa_from_transformers_dicts():
    cfg = _config("gqa-llama3")
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (4, 2, 8)
    assert cfg.rope_scaling is not None and cfg.rope_scaling.rope_type == "llama3"
    assert cfg.rope_scaling.original_max_position_embeddings == 64
    assert _config("gqa-linear").rope_scaling.factor == 4.0
    assert _config("mha-default").rope_scaling is None and _config("mha-default").rope_theta == 10000.0
    assert _config("mha-llama3-tied").tie_word_embeddings


def test_rope_scaling_changes_the_logits():
    """The llama3 comparison has power at this length: default rope on the same weights is far off."""
    ids, mask = _batch()
    model = _hf("gqa-llama3")
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    cfg = _config("gqa-llama3")
    plain = LlamaConfig(**{**cfg.__dict__, "rope_scaling": None})
    got = _logits(LlamaLM(plain), _to_params(model, plain, True), ids, mask)
    assert np.abs(got - want).max() > 1e-2


def test_decoder_stack_per_layer_with_explicit_positions():
    """`DecoderStack` (the pre-fusion uses it: no final norm, arbitrary positions) vs HF layer outputs."""
    model, cfg = _hf("gqa-llama3"), _config("gqa-llama3")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, T, 32)).astype(np.float32)
    positions = np.stack([np.arange(T) + 5, np.r_[0:4, 6:10, 20:24]])  # offsets and gaps
    outs = []
    hooks = [layer.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.model.layers]
    try:
        with torch.no_grad():
            model.model(inputs_embeds=torch.from_numpy(x), position_ids=torch.from_numpy(positions),
                        attention_mask=torch.ones(B, T, dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    stack = DecoderStack(cfg, cfg.num_layers)
    params = _to_params(model, cfg, scan=True)["decoder"]
    fn = jax.jit(lambda p, x, pos: stack.apply({"params": p}, x, pos, causal_mask(jnp.ones(pos.shape, bool)),
                                               mutable=["intermediates"]))
    (h, cache), state = fn(params, jnp.asarray(x), jnp.asarray(positions))
    assert cache is None
    per_layer = np.asarray(state["intermediates"]["layers"]["output"][0])  # [layers, B, T, D]
    for i, want in enumerate(outs):
        np.testing.assert_allclose(per_layer[i], want.numpy(), **TOL, err_msg=f"layer {i}")
    np.testing.assert_allclose(np.asarray(h), outs[-1].numpy(), **TOL)


def _restack(unscanned: dict, n: int) -> dict:
    return jax.tree.map(lambda *a: jnp.stack(a), *[unscanned[f"layers_{i}"] for i in range(n)])


@functools.lru_cache(maxsize=None)
def _logits_and_grads(scan: bool, remat: str):
    """Logits and the gradient of a fixed random projection of them, one jitted call per layout."""
    model, cfg = _hf("gqa-llama3"), _config("gqa-llama3")
    ids, mask = _batch()
    module, params = LlamaLM(cfg, scan_layers=scan, remat_policy=remat), _to_params(model, cfg, scan)
    weights = jnp.asarray(np.random.default_rng(0).standard_normal((B, T, V)).astype(np.float32))
    fwd = _forward_fn(module)

    def loss(p):
        logits = fwd(p, jnp.asarray(ids), jnp.asarray(mask, bool))
        return jnp.sum(logits * weights), logits

    (_, logits), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    if not scan:
        g = {**g, "decoder": {"layers": _restack(g["decoder"], cfg.num_layers)}}
    return np.asarray(logits), g


@pytest.mark.parametrize("scan,remat", [(True, "full"), (False, "none"), (False, "dots")])
def test_scan_and_remat_do_not_change_logits_or_gradients(scan, remat):
    ref_logits, g_ref = _logits_and_grads(True, "none")
    logits, g = _logits_and_grads(scan, remat)
    np.testing.assert_allclose(logits, ref_logits, **SELF)
    flat_ref = dict(jax.tree_util.tree_leaves_with_path(g_ref))
    for path, leaf in jax.tree_util.tree_leaves_with_path(g):
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(flat_ref[path]), **SELF,
                                   err_msg=jax.tree_util.keystr(path))
    assert float(jnp.abs(g["decoder"]["layers"]["self_attn"]["q_proj"]["kernel"]).max()) > 0


def test_kv_cache_prefill_then_decode_matches_full_forward():
    """Prefill rows of different lengths into a cache, then one decode step per row at its own index: the
    logits equal those of the full sequence at that position (per-row `write_cache` offsets)."""
    model, cfg = _hf("gqa-llama3"), _config("gqa-llama3")
    module, params = LlamaLM(cfg), _to_params(model, cfg, True)
    ids, mask = _batch()
    lengths = mask.sum(1)  # [12, 8]
    nxt = np.array([5, 7])
    full_ids = ids.copy()
    full_ids[1, 8] = nxt[1]
    full = np.concatenate([full_ids, [[nxt[0]], [0]]], axis=1)  # row 0 continues at 12, row 1 at 8
    full_mask = np.zeros_like(full)
    for b, n in enumerate(lengths):
        full_mask[b, :n + 1] = 1
    want = _logits(module, params, full, full_mask)[[0, 1], lengths]

    size = 16
    cache = {k: jnp.zeros((cfg.num_layers, B, size, cfg.num_kv_heads, cfg.head_dim)) for k in ("k", "v")}

    def prefill(p, ids, valid, cache):
        def f(m):
            pos = jnp.broadcast_to(jnp.arange(T), (B, T))
            key_valid = jnp.zeros((B, size), bool).at[:, :T].set(valid)
            return m(m.embed(ids), pos, causal_mask(key_valid, T), cache, jnp.zeros((B,), jnp.int32))
        return nn.apply(f, module)({"params": p})

    def step(p, tok, index, cache):
        def f(m):
            visible = (jnp.arange(size)[None, :] <= index[:, None])[:, None, None, :]
            return m(m.embed(tok[:, None]), index[:, None], visible, cache, index)
        return nn.apply(f, module)({"params": p})

    prefill_logits, cache = jax.jit(prefill)(params, jnp.asarray(ids), jnp.asarray(mask, bool), cache)
    np.testing.assert_allclose(np.asarray(prefill_logits)[mask.astype(bool)],
                               _logits(module, params, ids, mask)[mask.astype(bool)], **SELF)
    logits, cache = jax.jit(step)(params, jnp.asarray(nxt), jnp.asarray(lengths, jnp.int32), cache)
    np.testing.assert_allclose(np.asarray(logits)[:, 0], want, **SELF)
    assert cache["k"].shape == (cfg.num_layers, B, size, cfg.num_kv_heads, cfg.head_dim)


def test_write_cache_hand_values():
    cache = jnp.zeros((2, 5, 1))
    update = jnp.asarray([[[1.0], [2.0]], [[3.0], [4.0]]])
    out = np.asarray(write_cache(cache, update, jnp.array([0, 3])))[..., 0]
    np.testing.assert_array_equal(out, [[1, 2, 0, 0, 0], [0, 0, 0, 3, 4]])


def test_causal_mask_hand_values():
    valid = jnp.array([[True, True, True], [True, True, False]])
    m = np.asarray(causal_mask(valid))
    assert m.shape == (2, 1, 3, 3)
    np.testing.assert_array_equal(m[0, 0], np.tril(np.ones((3, 3), bool)))
    np.testing.assert_array_equal(m[1, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 0]])
    # two new queries against four keys (aligned at the start, as in prefill into a larger cache)
    np.testing.assert_array_equal(np.asarray(causal_mask(jnp.ones((1, 4), bool), 2))[0, 0],
                                  [[1, 0, 0, 0], [1, 1, 0, 0]])


def test_embed_maps_negative_ids_to_row_zero():
    cfg = _config("mha-default")
    module, params = LlamaLM(cfg), _to_params(_hf("mha-default"), cfg, True)
    e = np.asarray(module.apply({"params": params}, jnp.array([[-200, 0, 3]]), method="embed"))
    table = np.asarray(params["embed_tokens"]["embedding"])
    np.testing.assert_array_equal(e[0], table[[0, 0, 3]])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_causal_lengths_match_hf_and_the_dense_mask(variant):
    """`causal_by_lengths` (what cuDNN's flash attention takes) against HF and against the dense
    `causal_mask` on every real token."""
    model, cfg = _hf(variant), _config(variant)
    ids, mask = _batch()
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    module, params = LlamaLM(cfg), _to_params(model, cfg, scan=True)

    def fwd(p, ids, lengths):
        def f(m):
            pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
            return m(m.embed(ids), pos, causal_by_lengths(lengths))[0]
        return nn.apply(f, module)({"params": p})
    got = np.asarray(jax.jit(fwd)(params, jnp.asarray(ids), jnp.asarray(mask.sum(1), jnp.int32)))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], **TOL)
    np.testing.assert_allclose(got[real], _logits(module, params, ids, mask)[real], **SELF)


def test_write_layer_hand_values():
    cache = jnp.zeros((2, 2, 5, 1, 1))  # [layers, B, S, KV, hd]
    update = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])[..., None, None]  # [B, T=2, 1, 1]
    same = np.asarray(write_layer(cache, update, 1, 2))[..., 0, 0]  # every row at slot 2 of layer 1
    np.testing.assert_array_equal(same[0], 0)
    np.testing.assert_array_equal(same[1], [[0, 0, 1, 2, 0], [0, 0, 3, 4, 0]])
    own = np.asarray(write_layer(cache, update, jnp.int32(0), jnp.array([0, 3])))[..., 0, 0]  # rows' own slots
    np.testing.assert_array_equal(own[0], [[1, 2, 0, 0, 0], [0, 0, 0, 3, 4]])
    np.testing.assert_array_equal(own[1], 0)
    one = np.asarray(write_layer(cache[:, :1], update[:1], 1, jnp.array([1])))[..., 0, 0]  # one row: a plain slice
    np.testing.assert_array_equal(one[1], [[0, 1, 2, 0, 0]])


def test_attention_impl_auto_resolves_to_what_applies():
    causal = causal_by_lengths(jnp.array([3]))
    dense = AttentionMask(dense=jnp.ones((1, 1, 4, 4), bool))
    assert resolve_attention_impl("auto", jnp.bfloat16, 128, causal, 16) == ("cudnn" if jax.default_backend() == "gpu"
                                                                              else "xla")
    for args in ((jnp.float32, 128, causal, 16), (jnp.bfloat16, 128, dense, 16), (jnp.bfloat16, 128, causal, 1),
                 (jnp.bfloat16, 12, causal, 16)):
        assert resolve_attention_impl("auto", *args) == "xla", args  # float32, dense mask, decode, odd head_dim
    assert resolve_attention_impl("cudnn", jnp.float32, 128, causal, 16) == "cudnn"  # asked for: no second guess
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        resolve_attention_impl("flash", jnp.bfloat16, 128, causal, 16)


def test_attention_impl_is_a_runtime_field_of_the_model():
    from llava_mini_jax.model import LlavaMini
    from llava_mini_jax.tiny import tiny_config
    cfg = tiny_config("mini")
    assert "attention_impl" not in {f.name for f in dataclasses.fields(cfg)}  # keys no architecture
    assert LlavaMini(cfg).attention_impl == "auto"
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        LlavaMini(cfg, attention_impl="flash").init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
