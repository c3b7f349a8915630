"""projector.py against torch `nn.Sequential(Linear, GELU(), Linear, ...)` with the exact (erf) GELU.

Tolerance: atol = rtol = 1e-5 (float32, O(1) activations).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from llava_mini_jax.config import projector_layers
from llava_mini_jax.projector import Projector

d, D = 12, 20
TOL = dict(atol=1e-5, rtol=1e-5)


def _torch_projector(kind, seed):
    k = projector_layers(kind)
    layers = [torch.nn.Linear(d, D)]
    for _ in range(k - 1):
        layers += [torch.nn.GELU(), torch.nn.Linear(D, D)]
    seq = torch.nn.Sequential(*layers) if kind != "linear" else layers[0]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in (seq if kind != "linear" else [seq]):
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return seq


def _params(seq, kind):
    linears = [seq] if kind == "linear" else [m for m in seq if isinstance(m, torch.nn.Linear)]
    return {f"linear_{i}": {"kernel": jnp.asarray(m.weight.detach().numpy().T),
                            "bias": jnp.asarray(m.bias.detach().numpy())} for i, m in enumerate(linears)}


@pytest.mark.parametrize("kind", ["linear", "mlp2x_gelu", "mlp3x_gelu"])
def test_matches_torch_sequential(kind):
    seq = _torch_projector(kind, seed=len(kind))
    x = np.random.default_rng(0).standard_normal((2, 5, d)).astype(np.float32) * 2
    module = Projector(kind, D)
    params = _params(seq, kind)
    init = nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, d)))["params"])
    assert jax.tree.map(lambda a: a.shape, init) == jax.tree.map(lambda a: a.shape, params)
    ours = np.asarray(jax.jit(module.apply)({"params": params}, jnp.asarray(x)))
    want = seq(torch.from_numpy(x)).detach().numpy()
    assert ours.shape == (2, 5, D)
    np.testing.assert_allclose(ours, want, **TOL)
    if kind != "linear":  # the test can tell the tanh GELU apart (SPEC A §15)
        tanh = torch.nn.Sequential(*[torch.nn.GELU(approximate="tanh") if isinstance(m, torch.nn.GELU) else m
                                     for m in seq])
        assert np.abs(ours - tanh(torch.from_numpy(x)).detach().numpy()).max() > 10 * TOL["atol"]


def test_identity_has_no_params():
    x = jnp.arange(6, dtype=jnp.float32).reshape(1, 2, 3)
    variables = Projector("identity", 3).init(jax.random.key(0), x)
    assert not variables.get("params")
    np.testing.assert_array_equal(np.asarray(Projector("identity", 3).apply(variables, x)), np.asarray(x))


def test_bad_type_raises():
    with pytest.raises(ValueError, match="mm_projector_type='mlp2x_relu'"):
        Projector("mlp2x_relu", D).init(jax.random.key(0), jnp.zeros((1, d)))
