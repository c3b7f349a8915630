"""loss.py against torch `CrossEntropyLoss(ignore_index=-100)` on shifted logits, and hand-worked values.

Tolerance: atol = rtol = 1e-6 (float32 CE of O(1) logits).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import torch

from llava_mini_jax.loss import mean_cross_entropy, token_cross_entropy

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
