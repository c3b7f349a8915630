"""KV-cache generation: fixture greedy ids, cache == no cache, batch == rows alone, sampling."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES, fixture_data, fixture_model
from llava_mini_jax import GenerationConfig, generate
from llava_mini_jax.generate import bucket_length, filter_top_k, filter_top_p, next_token, programs
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
    """hd's row 0 is longer than its tokenizer_model_max_length: truncation='right' cuts it as the
    model call (and the reference) does."""
    model, params = fixture_model(name)
    ids, mask, images = _ragged_batch(name)
    got = generate(model, params, ids, attention_mask=mask, images=images, max_new_tokens=6, eos_token_ids=[],
                   truncation="right")
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
    assert programs(other, 0.0, None, None) is programs(model, 0.0, None, None)


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
    progs = programs(model, 0.0, None, None)
    before = progs.prefill._cache_size(), progs.decode._cache_size()
    for n in (10, 12, 14):  # one bucket (16), 5 tokens each
        generate(model, params, I["input_ids"][:1, :n], images=I["images"][:1], max_new_tokens=5, eos_token_ids=[])
    assert progs.decode._cache_size() - before[1] <= 1  # one decode-loop compile at most, none per token
    assert progs.prefill._cache_size() - before[0] <= 1  # one prefill compile for the whole bucket
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


# -- bucketing: compile counts and masked padding ---------------------------------------------------------
_COMPILES: list = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: _COMPILES.append(event) if "backend_compile" in event else None)


def _compiles_during(fn):
    before = len(_COMPILES)
    out = fn()
    return out, len(_COMPILES) - before


def test_any_max_new_tokens_in_the_bucket_reuses_the_programs():
    """max_new_tokens 3, 9, 16 after 5 (one bucket of 16): no compile, and greedy prefixes agree."""
    model, params = fixture_model("std")
    _, I, _, _ = fixture_data("std")
    run = lambda n: generate(model, params, I["input_ids"][:1, :12], images=I["images"][:1],  # noqa: E731
                             max_new_tokens=n, eos_token_ids=[])
    ref, _ = _compiles_during(lambda: run(16))
    for n in (3, 9, 5):
        out, count = _compiles_during(lambda: run(n))
        assert count == 0, f"max_new_tokens={n} compiled {count} programs"
        np.testing.assert_array_equal(out, ref[:, :n])


def _video(t, size=16, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, (1, t, 1, size, size, 3), dtype=np.uint8)
    return rng.standard_normal((1, t, 1, 3, size, size)).astype(dtype)


def test_any_frame_count_in_the_bucket_reuses_the_programs():
    """5 then 6, 7, 8 frames (bucket 8): the frames are padded and masked, nothing compiles again."""
    model, params = fixture_model("video")
    _, I, _, _ = fixture_data("video")
    ids = I["input_ids"][:1, :9]
    generate(model, params, ids, images=_video(5), max_new_tokens=4, eos_token_ids=[])
    for t in (6, 7, 8):
        _, count = _compiles_during(lambda: generate(model, params, ids, images=_video(t, seed=t), max_new_tokens=4,
                                                     eos_token_ids=[]))
        assert count == 0, f"{t} frames compiled {count} programs"


@pytest.mark.parametrize("chunk", [16, 2])
def test_padded_frames_and_streamed_chunks_change_nothing(chunk):
    """A 5-frame video padded to 8 frames (masked) and streamed `chunk` frames at a time (chunk 2: three
    chunks, the last one half padding) generates what cache-free decoding of the plain video does."""
    base, params = fixture_model("video")
    model = base.clone(video_chunk_size=chunk)
    _, I, _, _ = fixture_data("video")
    ids, mask = I["input_ids"][:1], I["attention_mask"][:1]
    video = _video(5, seed=3)
    got = generate(model, params, ids, attention_mask=mask, images=video, max_new_tokens=3, eos_token_ids=[])
    np.testing.assert_array_equal(got, _no_cache_greedy(model, params, ids, mask, video, 3))


def test_uint8_pixels_normalised_on_the_device_equal_host_normalised_floats():
    """uint8 frames / images (a quarter of the bytes) normalised on the device: the same tokens as the
    float32 pixels `image_processing.normalize` makes on the host."""
    from llava_mini_jax.image_processing import normalize
    model, params = fixture_model("video")
    _, I, _, _ = fixture_data("video")
    ids = I["input_ids"][:1]
    raw = _video(4, seed=5, dtype=np.uint8)
    floats = normalize(raw)
    kw = dict(max_new_tokens=4, eos_token_ids=[])
    np.testing.assert_array_equal(generate(model, params, ids, images=raw, **kw),
                                  generate(model, params, ids, images=floats, **kw))
    std, std_params = fixture_model("std")
    _, S, _, _ = fixture_data("std")
    np.testing.assert_array_equal(generate(std, std_params, S["input_ids"][:1], images=raw[:, 0], **kw),
                                  generate(std, std_params, S["input_ids"][:1], images=floats[:, 0], **kw))
    with pytest.raises(ValueError, match="uint8 images"):
        generate(model, params, ids, images=np.moveaxis(raw, -1, -3), **kw)  # channels first: not the uint8 layout


# -- the decode loop ------------------------------------------------------------------------------------------
def test_device_loop_stops_when_every_row_has_finished():
    """The on-device loop: EOS rows padded as the streamed path pads them, and it stops there."""
    gen_module = importlib.import_module("llava_mini_jax.generate")  # the package's `generate` is the function
    model, params = fixture_model("std")
    _, I, _, _ = fixture_data("std")
    ids, images = I["input_ids"][:2], I["images"][:2]
    mask = I["attention_mask"][:2]
    free = generate(model, params, ids, attention_mask=mask, images=images, max_new_tokens=8, eos_token_ids=[])
    eos = [int(free[0, 1]), int(free[1, 2])]
    kw = dict(attention_mask=mask, images=images, max_new_tokens=8, eos_token_ids=eos, pad_token_id=-1)
    loop = generate(model, params, ids, **kw)
    streamed = []
    np.testing.assert_array_equal(loop, generate(model, params, ids, stream=streamed.append, **kw))
    last = max(int(np.argmax(np.isin(free[b], eos))) for b in range(2))
    assert len(streamed) == last + 1 < 8
    assert (loop[:, last + 1:] == -1).all()
    progs = gen_module.programs(model, 0.0, None, None)
    table = np.zeros(model.config.llm.vocab_size, bool)
    table[:] = True  # every token ends its row: the loop produces the first token only
    cache = gen_module.init_kv_cache(model.config, 1, 32)
    out, produced, _ = progs.decode(params, jnp.array([3]), jnp.array([4]), cache, jax.random.key(0), jnp.int32(8),
                                    jnp.asarray(table), jnp.int32(-1), steps=16)
    assert int(produced) == 1 and (np.asarray(out)[0, 1:] == -1).all()


def test_streaming_dispatches_the_next_step_before_reading_a_token(monkeypatch):
    """With `stream`, step t+1 is on its way to the device before the host reads token t."""
    gen_module = importlib.import_module("llava_mini_jax.generate")  # the package's `generate` is the function
    model, params = fixture_model("std")
    _, I, _, _ = fixture_data("std")
    real = gen_module.programs(model, 0.0, None, None)
    log = []

    def step(*args, **kwargs):
        log.append("step")
        return real.step(*args, **kwargs)
    monkeypatch.setattr(gen_module, "programs", lambda *a, **k: real._replace(step=step))
    out = generate(model, params, I["input_ids"][:1, :12], images=I["images"][:1], max_new_tokens=4,
                   eos_token_ids=[], stream=lambda tokens: log.append("read"))
    assert log == ["step", "read", "step", "read", "step", "read", "read"]
    monkeypatch.undo()
    np.testing.assert_array_equal(out, generate(model, params, I["input_ids"][:1, :12], images=I["images"][:1],
                                                max_new_tokens=4, eos_token_ids=[]))


# -- memory: the KV cache is updated in place -----------------------------------------------------------------
_MEMORY_SCRIPT = r"""
import json, jax, jax.numpy as jnp
from llava_mini_jax.generate import chunked_prefill, init_kv_cache, programs
from llava_mini_jax.model import LlavaMini
from llava_mini_jax.tiny import tiny_config
cfg = tiny_config("mini", num_layers=4, hidden_size=128, num_heads=4, num_kv_heads=2, max_position_embeddings=8192)
model = LlavaMini(cfg)
S, T, D = 8192, 256, cfg.llm.hidden_size
sds = jax.ShapeDtypeStruct
params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
def temp_ratio(fn, *args):  # the cache is the last argument, donated
    compiled = jax.jit(fn, donate_argnums=(len(args) - 1,)).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes / sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(args[-1]))
out = {}
for b in (1, 2):  # one row writes its slot with a slice, several rows with a scatter
    cache = jax.eval_shape(lambda: init_kv_cache(cfg, b, S // b))
    ints = sds((b,), jnp.int32)
    out[f"decode_step_b{b}"] = temp_ratio(lambda p, t, i, c: model.apply({"params": p}, t, i, c, method="decode_step"),
                                          params, ints, ints, cache)
    decode = programs(model).decode
    compiled = decode.lower(params, ints, ints, cache, jax.random.key(0), jnp.int32(8),
                            sds((cfg.llm.vocab_size,), jnp.bool_), jnp.int32(0), steps=64).compile()
    out[f"decode_loop_b{b}"] = compiled.memory_analysis().temp_size_in_bytes / (2 * 4 * S * 2 * 32 * 4)
cache = jax.eval_shape(lambda: init_kv_cache(cfg, 1, S))
embeds, mask = sds((1, T, D), jnp.float32), sds((1, T), jnp.bool_)
out["prefill"] = temp_ratio(lambda p, e, m, c: model.apply({"params": p}, e, m, c, method="prefill"),
                            params, embeds, mask, cache)
out["chunked_prefill"] = temp_ratio(lambda p, e, m, c: chunked_prefill(model, p, e, m, c, 16), params, embeds, mask,
                                    cache)
print(json.dumps(out))
"""


def test_kv_cache_is_updated_in_place_at_the_default_optimisation_level():
    """XLA's memory plan (default optimisation level, in a subprocess: the suite compiles at level 0) of
    a decode step over a donated 16 MiB cache (4 layers, 8192 slots; one row, or two rows of 4096 slots
    writing at their own offsets): temporaries <= 0.3x the cache
    (one layer's keys and values are 0.25x; a cache scanned in and out of the layers took 1.4x). The
    prefills allocate no second cache either (that alone would be 1x; a chunk reads one layer's slice,
    0.25x, and holds its scores and probabilities)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(ratios[f"decode_{what}_b{b}"] <= 0.3 for what in ("step", "loop") for b in (1, 2)), ratios
    assert ratios["prefill"] < 0.5 and ratios["chunked_prefill"] < 0.75, ratios


# -- context length -------------------------------------------------------------------------------------------
def test_max_prompt_tokens_hand_values():
    from llava_mini_jax.generate import max_prompt_tokens
    std, hd = fixture_model("std")[0].config, fixture_model("hd")[0].config
    assert max_prompt_tokens(std, 16) == min(std.llm.max_position_embeddings - 16, std.max_length)
    assert (std.llm.max_position_embeddings, std.max_length) == (256, 2048)
    assert max_prompt_tokens(hd, 8) == 13 and max_prompt_tokens(hd, 250) == 6


def test_too_long_prompt_fails_before_any_allocation(monkeypatch):
    gen_module = importlib.import_module("llava_mini_jax.generate")  # the package's `generate` is the function
    model, params = fixture_model("textonly")
    monkeypatch.setattr(gen_module, "programs", lambda *a, **k: pytest.fail("compiled / allocated"))
    ids = np.ones((1, 5000), np.int32)  # a 100k-character prompt's worth of tokens, 256 positions
    with pytest.raises(ValueError, match=r"row 0: the prompt has 5000 tokens.*248.*max_position_embeddings 256.*"
                                         r"truncation='left'"):
        generate(model, params, ids, max_new_tokens=8)
    with pytest.raises(ValueError, match="max_new_tokens=300 leaves no room"):
        generate(model, params, ids[:, :4], max_new_tokens=300)


def test_tokenizer_model_max_length_is_a_limit_not_a_silent_cut():
    """hd sets tokenizer_model_max_length 13: row 0 (15 spliced tokens) fails unless truncation says how."""
    model, params = fixture_model("hd")
    ids, mask, images = _ragged_batch("hd")
    with pytest.raises(ValueError, match=r"row 0: the prompt has 15 tokens \(4 of them vision tokens\).*"
                                         r"tokenizer_model_max_length 13"):
        generate(model, params, ids, attention_mask=mask, images=images, max_new_tokens=4)


def test_left_truncation_drops_the_oldest_text_and_keeps_the_image_and_the_end():
    model, params = fixture_model("hd")
    ids, mask, images = _ragged_batch("hd")
    row = ids[0, :int(mask[0].sum())]  # 12 ids + the placeholder: 15 spliced, 2 too many
    got = generate(model, params, ids[:1], attention_mask=mask[:1], images=images[:1], max_new_tokens=4,
                   eos_token_ids=[], truncation="left")
    text = np.nonzero(row != -200)[0]
    keep = np.ones(len(row), bool)
    keep[text[:2]] = False
    want = generate(model, params, row[keep][None], images=images[:1], max_new_tokens=4, eos_token_ids=[])
    np.testing.assert_array_equal(got, want)
    assert (row[keep] == -200).sum() == 1 and row[keep][-1] == row[-1]


def test_right_truncation_of_text_cuts_the_end():
    model, params = fixture_model("textonly")
    ids = (np.arange(300) % 200 + 3)[None].astype(np.int32)
    got = generate(model, params, ids, max_new_tokens=6, eos_token_ids=[], truncation="right")
    np.testing.assert_array_equal(got, generate(model, params, ids[:, :250], max_new_tokens=6, eos_token_ids=[]))
    with pytest.raises(ValueError, match="truncation='middle'"):
        generate(model, params, ids, truncation="middle")
