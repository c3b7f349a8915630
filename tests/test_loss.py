"""loss.py against torch `CrossEntropyLoss(ignore_index=-100)` on shifted logits, and hand-worked values;
the chunked CE from hidden states against the CE of the full logits (values and gradients), and its
jaxpr against ever holding `[B, L, V]` logits.

Tolerance: atol = rtol = 1e-6 (float32 CE of O(1) logits; the chunked sums add in another order).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llava_mini_jax.loss import chunked_cross_entropy, mean_cross_entropy, token_cross_entropy

IGN = -100
TOL = dict(atol=1e-6, rtol=1e-6)
_mean = jax.jit(mean_cross_entropy)
_tokens = jax.jit(token_cross_entropy)


def _case(seed, b=3, n=7, v=11):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((b, n, v)) * 3).astype(np.float32)
    labels = np.where(rng.random((b, n)) < 0.6, rng.integers(0, v, (b, n)), IGN)
    labels[0, 1] = 3  # at least one supervised target
    return logits, labels


def test_matches_torch_cross_entropy_on_shifted_logits():
    for seed in range(3):
        logits, labels = _case(seed)
        loss, count = _mean(jnp.asarray(logits), jnp.asarray(labels))
        shifted = torch.from_numpy(logits[:, :-1]).reshape(-1, logits.shape[-1])
        targets = torch.from_numpy(labels[:, 1:]).reshape(-1)
        want = torch.nn.CrossEntropyLoss(ignore_index=IGN)(shifted, targets).item()
        want_sum = torch.nn.CrossEntropyLoss(ignore_index=IGN, reduction="sum")(shifted, targets).item()
        np.testing.assert_allclose(float(loss), want, **TOL)
        assert float(count) == (labels[:, 1:] != IGN).sum()
        total, count2 = _tokens(jnp.asarray(logits), jnp.asarray(labels))
        np.testing.assert_allclose(float(total), want_sum, **TOL)
        assert float(count2) == float(count)


def test_hand_worked_values():
    # uniform logits over V = 4: every supervised token costs log 4
    logits = jnp.zeros((1, 3, 4))
    loss, count = _mean(logits, jnp.array([[IGN, 2, 1]]))
    np.testing.assert_allclose(float(loss), math.log(4), rtol=1e-6)
    assert float(count) == 2
    # one position: logits [0, log 3] and target 1 -> -log(3 / (1 + 3)) = log(4/3)
    logits = jnp.array([[[0.0, math.log(3.0)], [9.0, 9.0]]])
    loss, count = _mean(logits, jnp.array([[IGN, 1]]))
    np.testing.assert_allclose(float(loss), math.log(4 / 3), rtol=1e-6)
    assert float(count) == 1


def test_first_label_and_last_logit_are_unused():
    """Position t predicts label t + 1: label 0 is never a target and the last logit row predicts nothing."""
    logits, labels = _case(5)
    a = _mean(jnp.asarray(logits), jnp.asarray(labels))[0]
    labels2, logits2 = labels.copy(), logits.copy()
    labels2[:, 0] = 1
    logits2[:, -1] = 1e3
    b = _mean(jnp.asarray(logits2), jnp.asarray(labels2))[0]
    assert float(a) == float(b)
    _, count = _mean(jnp.zeros((1, 2, 3)), jnp.array([[1, IGN]]))
    assert float(count) == 0


def test_no_supervised_token_gives_zero_loss_and_count():
    """Library decision D9 (the reference gives NaN)."""
    loss, count = _mean(jnp.zeros((2, 4, 5)), jnp.full((2, 4), IGN))
    assert float(loss) == 0.0 and float(count) == 0.0
    g = jax.jit(jax.grad(lambda x: mean_cross_entropy(x, jnp.full((2, 4), IGN))[0]))(jnp.zeros((2, 4, 5)))
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) == 0.0


def test_bfloat16_logits_are_computed_in_float32():
    logits, labels = _case(7)
    loss16, _ = _mean(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels))
    assert loss16.dtype == jnp.float32
    ref, _ = _mean(jnp.asarray(np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float32)), jnp.asarray(labels))
    np.testing.assert_allclose(float(loss16), float(ref), **TOL)


def test_gradient_matches_torch():
    logits, labels = _case(2)
    g = jax.jit(jax.grad(lambda x: mean_cross_entropy(x, jnp.asarray(labels))[0]))(jnp.asarray(logits))
    t = torch.from_numpy(logits).requires_grad_(True)
    torch.nn.CrossEntropyLoss(ignore_index=IGN)(t[:, :-1].reshape(-1, t.shape[-1]),
                                                torch.from_numpy(labels[:, 1:]).reshape(-1)).backward()
    np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), **TOL)


# -- chunked cross-entropy from hidden states ------------------------------------------------------
def _hidden_case(seed, b=3, n=7, d=8, v=11):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((b, n, d)).astype(np.float32)
    w = (rng.standard_normal((d, v)) / math.sqrt(d) * 3).astype(np.float32)
    labels = np.where(rng.random((b, n)) < 0.6, rng.integers(0, v, (b, n)), IGN)
    labels[0, 1] = 3
    return jnp.asarray(h), jnp.asarray(w), jnp.asarray(labels)


def _full(h, w, labels):
    """Per-row `(CE sum, count)` of the full logits (what the step computed before chunking)."""
    logits = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
    return jax.vmap(lambda lg, lb: token_cross_entropy(lg[None], lb[None]))(logits, labels)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])  # 3 pads 7 positions to 9; 64 >= L is one chunk
def test_chunked_equals_full_logits_values_and_gradients(chunk):
    h, w, labels = _hidden_case(chunk)
    got = jax.jit(chunked_cross_entropy, static_argnums=3)(h, w, labels, chunk)
    want = _full(h, w, labels)
    for g, e in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), **TOL)
    row_weights = jnp.asarray([0.5, 1.0, 2.0])

    def objective(fn, h, w):
        ce, _ = fn(h, w, labels)
        return (ce * row_weights).sum()
    g_chunk = jax.jit(jax.grad(lambda h, w: objective(lambda *a: chunked_cross_entropy(*a, chunk), h, w),
                               argnums=(0, 1)))(h, w)
    g_full = jax.jit(jax.grad(lambda h, w: objective(_full, h, w), argnums=(0, 1)))(h, w)
    for g, e in zip(g_chunk, g_full):
        assert float(jnp.abs(e).max()) > 1e-3
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), **TOL)


def _avals(jaxpr):
    """Every intermediate's abstract value in a jaxpr and its sub-jaxprs (scan, remat, jit bodies)."""
    from jax.extend import core
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            yield v.aval
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                if isinstance(sub, core.ClosedJaxpr):
                    yield from _avals(sub.jaxpr)
                elif isinstance(sub, core.Jaxpr):
                    yield from _avals(sub)


def test_chunked_never_holds_the_full_logits():
    """Forward and backward of the chunked CE hold at most one chunk of logits ([B, chunk, V]), the full
    formulation holds [B, L, V]: the biggest vocabulary-wide intermediate of each, from the jaxprs."""
    b, n, d, v, chunk = 2, 64, 8, 50, 16
    h, w, labels = jnp.zeros((b, n, d)), jnp.zeros((d, v)), jnp.zeros((b, n), jnp.int32)

    def biggest_vocab_array(fn):
        jaxpr = jax.make_jaxpr(jax.grad(lambda h, w: fn(h, w, labels)[0].sum(), argnums=(0, 1)))(h, w).jaxpr
        return max(int(np.prod(a.shape)) for a in _avals(jaxpr) if a.shape and a.shape[-1] == v and a.ndim >= 3)
    assert biggest_vocab_array(lambda *a: chunked_cross_entropy(*a, chunk)) == b * chunk * v
    assert biggest_vocab_array(_full) == b * n * v
