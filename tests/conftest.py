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
def tiny_checkpoint_dir(tmp_path_factory):
    """A tiny random LLaVA-Mini checkpoint (HF layout, the Vicuna fixture tokenizer), built once."""
    import jax
    from llava_mini_jax import LlavaMini
    from llava_mini_jax.loading import init_params
    from tiny_checkpoint import tiny_config, write_checkpoint
    cfg = tiny_config(2000)
    model = LlavaMini(cfg)
    params = jax.jit(lambda key: init_params(model, key))(jax.random.key(0))  # 3x faster than eager init
    return write_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint") / "tiny", cfg, params)


@pytest.fixture(scope="session")
def tiny_chat(tiny_checkpoint_dir):
    """A `ChatSession` on it: one model object, so the serving tests share their compiled functions."""
    from llava_mini_jax.chat import ChatSession
    return ChatSession(tiny_checkpoint_dir)
