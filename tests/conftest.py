"""Shared test helpers: the vendored reference fixtures, loaded once per session."""
from __future__ import annotations

import functools
import json
import os
import pathlib

# 8 host devices for the sharding tests; optimisation level 0 compiles ~30% faster on CPU with the
# same float32 results (measured on the fixtures).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
MODEL_FIXTURES = ("std", "hd", "video", "textonly", "baseline")
TOL = dict(atol=1e-4, rtol=1e-4)  # the float32 tolerance against the reference


@functools.lru_cache(maxsize=None)
def fixture_data(name: str):
    """`(meta, inputs, expected, grads)` of one model fixture, as dicts of numpy arrays."""
    d = FIXTURES / name
    meta = json.loads((d / "fixture.json").read_text())
    load = lambda f: dict(np.load(d / f))  # noqa: E731
    return meta, load("inputs.npz"), load("expected.npz"), load("grads.npz")


@functools.lru_cache(maxsize=None)
def fixture_model(name: str, **overrides):
    """`(model, params)` of a fixture checkpoint, float32 (cached for the session)."""
    import jax.numpy as jnp
    from llava_mini_jax import load_pretrained
    return load_pretrained(FIXTURES / name / "hf", dtype=jnp.float32, **overrides)


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory) -> pathlib.Path:
    """A random tiny LLaVA-Mini in the HF layout (`llava_mini_jax.tiny`) with the vicuna fixture
    tokenizer, CLIP's processor config and EOS 2: what the chat, CLI and eval tests talk to."""
    from llava_mini_jax.config import GenerationConfig
    from llava_mini_jax.tiny import random_checkpoint, tiny_config
    cfg = tiny_config("mini", vocab_size=2000, max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=0,
                      vision_select_layer=-2, prefusion_layers=1)
    return pathlib.Path(random_checkpoint(
        tmp_path_factory.mktemp("tiny_hf") / "model", cfg, seed=0, generation=GenerationConfig((2,), 0),
        tokenizer_dir=str(FIXTURES / "preprocess" / "tokenizers" / "vicuna"),
        processor_config=str(FIXTURES / "std" / "hf" / "clip" / "preprocessor_config.json")))


_JITTED: dict = {}


def japply(model, params, *args, method=None, mutable=False, **kwargs):
    """`model.apply({"params": params}, ...)` under a cached `jax.jit` (eager Flax on CPU spends
    seconds compiling op by op; the eager public call has its own tests)."""
    import jax
    key = (model, method, mutable if isinstance(mutable, bool) else tuple(mutable), tuple(sorted(kwargs)))
    if key not in _JITTED:
        def fn(p, args, kwargs):
            return model.apply({"params": p}, *args, method=method, mutable=mutable, **kwargs)
        _JITTED[key] = jax.jit(fn)
    return _JITTED[key](params, args, kwargs)


def assert_close(got, want, what="", **tol):
    tol = tol or TOL
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), err_msg=what, **tol)


@pytest.fixture(params=MODEL_FIXTURES)
def model_fixture(request):
    return request.param


@pytest.fixture(scope="session")
def tiny_chat(tiny_hf_checkpoint):
    """A `ChatSession` on it: one model object, so the serving tests share their compiled functions."""
    from llava_mini_jax.chat import ChatSession
    return ChatSession(tiny_hf_checkpoint)
