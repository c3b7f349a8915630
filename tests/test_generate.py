"""KV-cache generation: fixture greedy ids, cache == no cache, batch == rows alone, sampling."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES, fixture_data, fixture_model
from llava_mini_jax import GenerationConfig, generate
from llava_mini_jax.generate import _compiled, bucket_length, filter_top_k, filter_top_p, next_token
from llava_mini_jax.llama import causal_mask


@pytest.mark.parametrize("name", ["std", "hd", "video", "textonly", "baseline"])
def test_greedy_equals_reference(name):
    _, I, _, _ = fixture_data(name)
    model, params = fixture_model(name)
    cases = json.loads((FIXTURES / name / "greedy.json").read_text())
    for case in cases["cases"]:
        k = case["images_key"]
        out = generate(model, params, np.array(case["input_ids"]), attention_mask=np.array(case["attention_mask"]),
                       images=None if k is None else I[k], max_new_tokens=cases["max_new_tokens"],
                       eos_token_ids=case["eos_token_ids"], pad_token_id=case["pad_token_id"])
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, np.array(case["expected"]), err_msg=f"{name}/{case['name']}")


def _no_cache_greedy(model, params, ids, mask, images, steps):
    """Reference decoding without a cache: the whole sequence through the LLM at every step, each
    new token appended (as its raw embedding) right after its row's last token."""
    embeds, valid, _ = model.apply({"params": params}, ids, mask, images, method="splice_inputs")
    embeds, valid = np.asarray(embeds), np.asarray(valid)
    b, n = valid.shape[0], valid.sum(1)
    width = valid.shape[1] + steps
    embeds = np.concatenate([embeds, np.zeros((b, steps, embeds.shape[2]), embeds.dtype)], 1)
    valid = np.concatenate([valid, np.zeros((b, steps), bool)], 1)

    def forward(m, e, v):
        pos = jnp.broadcast_to(jnp.arange(width), v.shape)
        return m.llm(e, pos, causal_mask(v))[0]
    out = []
    for t in range(steps):
        logits = np.asarray(model.apply({"params": params}, embeds, valid, method=forward))
        tok = logits[np.arange(b), n + t - 1].argmax(-1)
        out.append(tok)
        raw = np.asarray(model.apply({"params": params}, jnp.asarray(tok[:, None]), method="embed_text"))[:, 0]
        embeds[np.arange(b), n + t] = raw
        valid[np.arange(b), n + t] = True
    return np.stack(out, 1)


def _ragged_batch(name):
    """Two rows of different lengths (right padded), each with its image."""
    _, I, _, _ = fixture_data(name)
    ids, mask = I["input_ids"][:2].copy(), I["attention_mask"][:2].copy()
    return ids, mask, I["images"][:2]


@pytest.mark.parametrize("name", ["std", "hd"])
def test_cache_and_no_cache_decoding_agree(name):
    model, params = fixture_model(name)
    ids, mask, images = _ragged_batch(name)
    got = generate(model, params, ids, attention_mask=mask, images=images, max_new_tokens=6, eos_token_ids=[])
    want = _no_cache_greedy(model, params, ids, mask, images, 6)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["std", "video"])
def test_batch_equals_rows_alone(name):
    """D5: rows of different spliced lengths each continue from their own last token."""
    model, params = fixture_model(name)
    ids, mask, images = _ragged_batch(name)
    assert mask.sum(1)[0] != mask.sum(1)[1]
    batch = generate(model, params, ids, attention_mask=mask, images=images, max_new_tokens=6, eos_token_ids=[])
    for b in range(2):
        n = int(mask[b].sum())
        alone = generate(model, params, ids[b:b + 1, :n], images=images[b:b + 1], max_new_tokens=6,
                         eos_token_ids=[])
        np.testing.assert_array_equal(batch[b], alone[0], err_msg=f"row {b}")


def test_text_only_batch_equals_rows_alone():
    model, params = fixture_model("textonly")
    _, I, _, _ = fixture_data("textonly")
    ids, mask = I["text_input_ids"], I["text_attention_mask"]
    batch = generate(model, params, ids, attention_mask=mask, max_new_tokens=5, eos_token_ids=[])
    for b in range(ids.shape[0]):
        alone = generate(model, params, ids[b:b + 1, :int(mask[b].sum())], max_new_tokens=5, eos_token_ids=[])
        np.testing.assert_array_equal(batch[b], alone[0])


def test_eos_pads_the_rest_and_stops_early_and_streams():
    model, params = fixture_model("std")
    _, I, _, _ = fixture_data("std")
    ids = I["input_ids"][:1, :12]
    free = generate(model, params, ids, images=I["images"][:1], max_new_tokens=6, eos_token_ids=[])
    eos = int(free[0, 2])
    streamed = []
    out = generate(model, params, ids, images=I["images"][:1], max_new_tokens=6, eos_token_ids=[eos],
                   pad_token_id=-1, stream=streamed.append)
    first = int(np.argmax(free[0] == eos))
    np.testing.assert_array_equal(out[0, :first + 1], free[0, :first + 1])
    assert (out[0, first + 1:] == -1).all()
    assert len(streamed) == first + 1  # stopped once every row finished
    np.testing.assert_array_equal(np.concatenate(streamed), out[0, :first + 1])


def test_default_eos_comes_from_generation_config():
    model, params = fixture_model("std")
    assert model.generation == GenerationConfig(eos_token_ids=(2,), pad_token_id=0)
    assert not hasattr(model.config, "eos_token_ids")  # generation settings key no compile


def test_generation_settings_do_not_recompile():
    """Another EOS / pad setting on the same model reuses the compiled prefill and step."""
    model, params = fixture_model("std")
    other = model.clone(generation=GenerationConfig(eos_token_ids=(5,), pad_token_id=1))
    assert other == model and hash(other) == hash(model)
    assert _compiled(other, 0.0, None, None) is _compiled(model, 0.0, None, None)


def test_sampling_is_reproducible_per_seed():
    model, params = fixture_model("std")
    _, I, _, _ = fixture_data("std")
    kw = dict(images=I["images"][:1], max_new_tokens=8, temperature=1.5, top_k=50, eos_token_ids=[])
    ids = I["input_ids"][:1, :12]
    a = generate(model, params, ids, rng=7, **kw)
    b = generate(model, params, ids, rng=jax.random.key(7), **kw)
    c = generate(model, params, ids, rng=8, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_decode_step_compiles_once_and_buckets_bound_prefill_compiles():
    model, params = fixture_model("std")
    _, I, _, _ = fixture_data("std")
    prefill, step = _compiled(model, 0.0, None, None)
    before = prefill._cache_size(), step._cache_size()
    for n in (10, 12, 14):  # one bucket (16), 5 tokens each
        generate(model, params, I["input_ids"][:1, :n], images=I["images"][:1], max_new_tokens=5, eos_token_ids=[])
    assert step._cache_size() - before[1] <= 1  # one decode-step compile at most, none per token
    assert prefill._cache_size() - before[0] <= 1  # one prefill compile for the whole bucket
    assert [bucket_length(n) for n in (1, 16, 17, 1000, 1025, 3000)] == [16, 16, 32, 1024, 2048, 3072]


def test_top_k_keeps_the_k_largest_with_ties():
    logits = jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25]]))
    kept = np.isfinite(np.asarray(filter_top_k(logits, 2)))
    np.testing.assert_array_equal(kept[0], [False, True, False, True])
    assert kept[1].all()  # ties with the 2nd largest are kept (as HF)


@pytest.mark.parametrize("p, keep", [(0.5, 1), (0.55, 2), (0.8, 2), (0.81, 3), (0.96, 4), (1.0, 4)])
def test_top_p_keeps_the_smallest_nucleus(p, keep):
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    perm = np.array([2, 0, 3, 1])  # shuffled vocabulary order
    logits = jnp.log(jnp.asarray(probs[perm]))[None]
    kept = np.isfinite(np.asarray(filter_top_p(logits, p)))[0]
    assert kept.sum() == keep
    assert set(np.nonzero(kept)[0]) == {int(np.nonzero(perm == i)[0][0]) for i in range(keep)}


def test_sampling_frequencies_follow_the_filtered_distribution():
    """top_k=2 over [0.5, 0.3, 0.15, 0.05]: only tokens 0/1, with probabilities 0.625/0.375."""
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    toks = np.asarray(next_token(logits, jax.random.key(0), 1.0, 2, None))
    assert set(np.unique(toks)) <= {0, 1}
    frac = (toks == 0).mean()
    assert abs(frac - 0.625) < 3 * np.sqrt(0.625 * 0.375 / 4000)
    greedy = np.asarray(next_token(logits[:2], None, 0.0, None, None))
    np.testing.assert_array_equal(greedy, [0, 0])


def test_bad_arguments_raise():
    model, params = fixture_model("std")
    ids = np.array([[1, 5, 6]])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, params, ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, params, ids, temperature=1.0, top_p=0.0)


@pytest.mark.parametrize("name", ["std", "video"])
def test_chunked_prefill_equals_one_pass(name):
    """Prompts longer than `prefill_chunk` prefill chunk by chunk: same tokens as one pass."""
    model, params = fixture_model(name)
    ids, mask, images = _ragged_batch(name)
    one = generate(model, params, ids, attention_mask=mask, images=images, max_new_tokens=5, eos_token_ids=[],
                   prefill_chunk=None)
    for chunk in (3, 8):
        got = generate(model, params, ids, attention_mask=mask, images=images, max_new_tokens=5, eos_token_ids=[],
                       prefill_chunk=chunk)
        np.testing.assert_array_equal(got, one, err_msg=f"chunk {chunk}")


def test_chunked_prefill_bounds_attention_memory():
    """XLA's memory plan of the prefill: chunking a 1024-token prompt cuts the temporaries (the
    one-pass program holds the full S x S attention scores)."""
    from llava_mini_jax.generate import chunked_prefill, init_kv_cache
    model, params = fixture_model("std")
    embeds = jax.ShapeDtypeStruct((1, 1024, model.config.llm.hidden_size), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 1024), jnp.bool_)

    def temp_bytes(fn):
        return jax.jit(fn).lower(params, embeds, mask).compile().memory_analysis().temp_size_in_bytes

    def one(p, e, m):
        return model.apply({"params": p}, e, m, init_kv_cache(model.config, 1, 1024), method="prefill")

    def chunked(p, e, m):
        return chunked_prefill(model, p, e, m, init_kv_cache(model.config, 1, 1024), 128)
    assert temp_bytes(chunked) * 3 < temp_bytes(one)
