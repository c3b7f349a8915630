"""The continuous-batching engine: each request decodes exactly as `generate` alone, whatever shares
the batch; slots free at once; no compiles after warm-up; errors name the problem."""
from __future__ import annotations

import time

import jax
import numpy as np
import pytest

from llava_mini_jax.chat import eos_token_ids, prompt_ids
from llava_mini_jax.engine import Engine, QueueFull, Request, SamplingParams, sample_rows
from llava_mini_jax.generate import generate, next_token
from media import video_file
from serve_helpers import GEOMETRY, VIDEO_FRAMES, image, warm

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
REF_TOKENS = 12  # every reference `generate` call makes this many (one compile per shape, not per request)


@pytest.fixture(scope="module")
def media(tiny_chat, tmp_path_factory):
    video = video_file(tmp_path_factory.mktemp("engine_media") / "clip.mkv")
    out = {"image0": tiny_chat.load_pixels(image=image(0)), "image1": tiny_chat.load_pixels(image=image(1)),
           "video": tiny_chat.load_pixels(video=str(video))}
    assert out["video"].shape[0] == VIDEO_FRAMES
    return out


@pytest.fixture(scope="module")
def engine(tiny_chat):
    eng = Engine(tiny_chat.model, tiny_chat.params, **GEOMETRY)
    warm(eng, tiny_chat)
    with eng:
        yield eng


def make_request(chat, question, pixels=None, max_tokens=REF_TOKENS, temperature=0.0, top_p=1.0, seed=0):
    ids = np.asarray(prompt_ids(question, chat.template, chat.tokenizer, with_image=pixels is not None), np.int32)
    eos = eos_token_ids(chat.model.generation, chat.tokenizer, chat.template)
    return Request(ids, pixels, SamplingParams(max_tokens, temperature, top_p, seed, eos))


def alone(chat, request) -> list[int]:
    """What `generate` makes for the request on its own (cut at its max_tokens, EOS kept)."""
    p = request.sampling
    out = generate(chat.model, chat.params, request.input_ids[None],
                   images=None if request.pixels is None else request.pixels[None], max_new_tokens=REF_TOKENS,
                   temperature=p.temperature, top_p=None if p.top_p == 1.0 else p.top_p,
                   eos_token_ids=p.eos_token_ids, pad_token_id=-1, rng=p.seed)[0]
    tokens = [int(t) for t in out if t >= 0][:p.max_tokens]
    return tokens


class CompileCounter:
    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == COMPILE_EVENT:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def test_sample_rows_draws_what_next_token_draws_per_row():
    logits = jax.random.normal(jax.random.key(3), (4, 50)) * 3
    seeds = np.array([0, 7, -5, 2 ** 31 - 1], np.int32)
    steps = np.array([0, 3, 1, 9], np.int32)
    temps = np.array([0.0, 0.7, 1.3, 1.0], np.float32)
    top_p = np.array([1.0, 0.9, 1.0, 0.5], np.float32)
    got = np.asarray(jax.jit(sample_rows)(logits, seeds, steps, temps, top_p))
    for i in range(4):
        key = jax.random.fold_in(jax.random.key(int(seeds[i])), int(steps[i]))
        want = next_token(logits[i:i + 1], key, float(temps[i]), None, None if top_p[i] == 1 else float(top_p[i]))
        assert got[i] == int(want[0]), i


def test_every_request_equals_generate_alone_with_staggered_arrivals(engine, tiny_chat, media):
    chat = tiny_chat
    waves = [
        [make_request(chat, "What is in the image?", media["image0"], max_tokens=5),
         make_request(chat, "Hello", max_tokens=REF_TOKENS),
         make_request(chat, "Describe the video.", media["video"], max_tokens=9)],
        [make_request(chat, "A longer question, " * 4, max_tokens=3),
         make_request(chat, "Colours?", media["image1"], max_tokens=REF_TOKENS),
         make_request(chat, "Tell me a story", temperature=0.8, top_p=0.9, seed=11, max_tokens=10)],
        [make_request(chat, "What is here?", media["image0"]),
         make_request(chat, "Hi", max_tokens=1),
         make_request(chat, "Again the video", media["video"], max_tokens=REF_TOKENS),
         make_request(chat, "x " * 20, max_tokens=7)],
    ]
    handles = []
    with CompileCounter() as compiles:
        for wave in waves:  # each wave arrives while the previous one is decoding
            handles += [engine.submit(r) for r in wave]
            deadline = time.monotonic() + 30
            while engine.queued and time.monotonic() < deadline:
                time.sleep(0.001)
        results = [h.result(timeout=60) for h in handles]
    assert compiles.count == 0
    requests = [r for wave in waves for r in wave]
    for i, (r, (tokens, reason)) in enumerate(zip(requests, results)):
        want = alone(chat, r)
        assert tokens == want, f"request {i}"
        assert reason == ("stop" if want[-1] in r.sampling.eos_token_ids else "length")
        assert len(tokens) <= r.sampling.max_tokens


def test_no_compiles_after_warmup_over_a_varied_workload(engine, tiny_chat, media):
    chat = tiny_chat
    questions = ["Q", "What colour is it?", "word " * 3, "Describe everything in great detail. " * 5]
    requests = []
    for i in range(20):  # more requests than slots: slots are reused
        px = [None, media["image0"], media["image1"], media["video"], None][i % 5]
        requests.append(make_request(chat, questions[i % 3] if px is not None else questions[(i // 5) % 4], px,
                                     max_tokens=1 + i % 6, temperature=(i % 3) * 0.5, top_p=1.0 if i % 2 else 0.8,
                                     seed=i))
    assert {r.input_ids.size > 64 for r in requests if r.pixels is None} == {True, False}  # both text buckets
    assert max(engine.prompt_length(r.input_ids, r.pixels) for r in requests if r.pixels is not None) < 64
    with CompileCounter() as compiles:
        handles = [engine.submit(r) for r in requests]
        handles[3].cancel()
        results = [h.result(timeout=60) for h in handles]
    assert compiles.count == 0
    assert all(len(t) <= r.sampling.max_tokens for r, (t, _) in zip(requests, results))


def test_cancel_frees_the_slot_at_once(engine, tiny_chat):
    handle = engine.submit(make_request(tiny_chat, "Talk for a long time", max_tokens=10 ** 6))
    events = handle.events(timeout=30)
    assert next(events).tokens  # decoding
    assert handle.max_tokens == GEOMETRY["max_context"] - handle.prompt_tokens + 1  # cut to the room left
    engine.pause()  # no more steps: only the cancellation can free the slot
    try:
        handle.cancel()
        reason = None
        for event in events:
            reason = event.finish_reason
        assert reason == "cancelled"
        assert engine.active == 0
    finally:
        engine.resume()


def test_full_queue_refuses_at_once(tiny_chat):
    eng = Engine(tiny_chat.model, tiny_chat.params, **dict(GEOMETRY, max_queue=2))  # not started: nothing runs
    r = make_request(tiny_chat, "Hi")
    eng.submit(r), eng.submit(r)
    t = time.monotonic()
    with pytest.raises(QueueFull, match="max_queue=2"):
        eng.submit(r)
    assert time.monotonic() - t < 0.1
    eng.stop()


def test_bad_requests_name_the_problem(tiny_chat, media):
    eng = Engine(tiny_chat.model, tiny_chat.params, **GEOMETRY)
    good = make_request(tiny_chat, "Hi", media["image0"])
    ids = good.input_ids
    with pytest.raises(ValueError, match="prompt is .* tokens .* context holds 128"):
        eng.submit(make_request(tiny_chat, "word " * 200))
    with pytest.raises(ValueError, match="2 image placeholders"):
        eng.submit(Request(np.concatenate([ids, ids]), media["image0"]))
    with pytest.raises(ValueError, match="pixels is None"):
        eng.submit(Request(ids))
    with pytest.raises(ValueError, match="no image placeholder"):
        eng.submit(Request(make_request(tiny_chat, "Hi").input_ids, media["image0"]))
    with pytest.raises(ValueError, match=r"pixels shape \(1, 3, 8, 8\)"):
        eng.submit(Request(ids, np.zeros((1, 3, 8, 8), np.float32)))
    for kw, msg in [(dict(max_tokens=0), "max_tokens"), (dict(temperature=-1), "temperature"),
                    (dict(top_p=0.0), "top_p"), (dict(seed=2 ** 31), "seed")]:
        with pytest.raises(ValueError, match=msg):
            SamplingParams(**kw)
    with pytest.raises(ValueError, match="max_context=5000"):
        Engine(tiny_chat.model, tiny_chat.params, max_context=5000)


def test_prompt_length_counts_vision_tokens(tiny_chat, media):
    eng = Engine(tiny_chat.model, tiny_chat.params, **GEOMETRY)
    ids = make_request(tiny_chat, "Hi", media["image0"]).input_ids
    assert eng.prompt_length(ids, media["image0"]) == ids.size  # one token replaces the placeholder
    assert eng.prompt_length(ids, media["video"]) == ids.size - 1 + VIDEO_FRAMES  # one per frame


def test_a_failed_step_fails_its_requests_and_the_engine_goes_on(tiny_chat):
    eng = Engine(tiny_chat.model, tiny_chat.params, **GEOMETRY)
    real, calls = eng._step, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real(*args)

    eng._step = flaky
    with eng:
        with pytest.raises(RuntimeError, match="decode step failed: injected"):
            eng.submit(make_request(tiny_chat, "Hi", max_tokens=3)).result(timeout=60)
        tokens, reason = eng.submit(make_request(tiny_chat, "Hi", max_tokens=3)).result(timeout=60)
        assert len(tokens) == 3 and reason == "length" and eng.running


def test_a_crashed_loop_fails_what_waits_and_refuses_more(tiny_chat):
    eng = Engine(tiny_chat.model, tiny_chat.params, **GEOMETRY)
    eng._admit = lambda slot, handle: 1 / 0  # a bug in the loop itself
    with eng:
        with pytest.raises(RuntimeError, match="the engine stopped"):
            eng.submit(make_request(tiny_chat, "Hi")).result(timeout=60)
        eng._thread.join(10)
        assert not eng.running
        with pytest.raises(RuntimeError, match="stopped"):
            eng.submit(make_request(tiny_chat, "Hi"))

