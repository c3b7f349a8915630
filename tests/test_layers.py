"""layers.py: named dense layers, norms against torch / transformers, remat policies and `run_layers`
(scanned vs unrolled, a prefix of the layers) on hand-worked values.

Tolerances: norms vs torch atol = rtol = 1e-6 (float32); hand-worked values exact.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from llava_mini_jax.layers import RMSNorm, dense, layer_norm, remat_policy, run_layers

NORM_TOL = dict(atol=1e-6, rtol=1e-6)


def test_dense_kernel_layout_and_logical_names():
    module = dense((3, 4), ("embed", "heads", "head_dim"), use_bias=True, bias_names=("heads", "head_dim"))
    variables = module.init(jax.random.key(0), jnp.zeros((2, 5)))
    k, b = variables["params"]["kernel"], variables["params"]["bias"]
    assert isinstance(k, nn.LogicallyPartitioned) and k.names == ("embed", "heads", "head_dim")
    assert k.value.shape == (5, 3, 4) and b.names == ("heads", "head_dim") and b.value.shape == (3, 4)
    # y[..., h, e] = sum_i x[..., i] k[i, h, e] + b[h, e]
    p = nn.unbox(variables["params"])
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32))
    want = np.einsum("ni,ihe->nhe", np.asarray(x), np.asarray(p["kernel"])) + np.asarray(p["bias"])
    np.testing.assert_allclose(np.asarray(module.apply({"params": p}, x)), want, atol=1e-6)
    # contracting two trailing axes, as o_proj does
    out = dense(6, ("heads", "head_dim", "embed"), axis=(-2, -1))
    v = out.init(jax.random.key(1), jnp.zeros((2, 3, 4)))["params"]["kernel"]
    assert v.value.shape == (3, 4, 6) and "bias" not in out.init(jax.random.key(1), jnp.zeros((2, 3, 4)))["params"]


def test_dense_full_rank_kernel_under_a_mesh():
    """Under `jax.set_mesh` + the logical rules, the full-rank `[embed, heads, head_dim]` kernel initialises
    and applies with its declared sharding (Flax's `nn.DenseGeneral` constrains its flattened 2-D kernel
    with 3 names there and fails), and the result equals the unsharded one."""
    from llava_mini_jax.sharding import LOGICAL_AXIS_RULES, make_mesh
    module = dense((4, 8), ("embed", "heads", "head_dim"))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    mesh = make_mesh((2, 2, 2))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        params = jax.jit(lambda k: nn.unbox(module.init(k, x)["params"]))(jax.random.key(0))
        y = jax.jit(lambda p, x: module.apply({"params": p}, x))(params, x)
    assert tuple(params["kernel"].sharding.spec) + (None,) * (3 - len(params["kernel"].sharding.spec)) == (
        "fsdp", "tensor", None)
    want = np.einsum("ni,ihe->nhe", np.asarray(x), np.asarray(params["kernel"]))
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-6)
    with pytest.raises(ValueError, match="kernel names"):
        dense(3, ("embed", "heads", "head_dim")).init(jax.random.key(0), x)


def test_layer_norm_matches_torch():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 7, 16)) * 3 + 1).astype(np.float32)
    scale, bias = (1 + 0.1 * rng.standard_normal(16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    ln = layer_norm(1e-5)
    variables = ln.init(jax.random.key(0), jnp.asarray(x))
    assert variables["params"]["scale"].names == ("norm",) and variables["params"]["bias"].names == ("norm",)
    ours = np.asarray(ln.apply({"params": {"scale": scale, "bias": bias}}, jnp.asarray(x)))
    t = torch.nn.LayerNorm(16, eps=1e-5)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(scale))
        t.bias.copy_(torch.from_numpy(bias))
        want = t(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, want, **NORM_TOL)


def test_rms_norm_matches_transformers_and_hand_value():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 5, 16)) * 2).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(16)).astype(np.float32)
    ours = np.asarray(RMSNorm(1e-5).apply({"params": {"scale": w}}, jnp.asarray(x)))
    t = LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(w))
        want = t(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, want, **NORM_TOL)
    # hand: x = [3, 4], mean(x^2) = 12.5, eps 0 -> x / sqrt(12.5)
    hand = RMSNorm(0.0).apply({"params": {"scale": jnp.ones(2)}}, jnp.array([[3.0, 4.0]]))
    np.testing.assert_allclose(np.asarray(hand), [[3 / 12.5 ** 0.5, 4 / 12.5 ** 0.5]], rtol=1e-6)


def test_rms_norm_statistics_in_float32_for_bfloat16():
    x = jnp.full((1, 4), 300.0, jnp.bfloat16)  # x*x = 90000 overflows nothing but loses bf16 precision
    out = RMSNorm(1e-5, dtype=jnp.bfloat16).apply({"params": {"scale": jnp.ones(4)}}, x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), 1.0, atol=1e-2)


def test_remat_policy_names():
    assert remat_policy("none") is None
    assert remat_policy("full") is jax.checkpoint_policies.nothing_saveable
    assert remat_policy("dots") is jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    with pytest.raises(ValueError, match="remat_policy='some'"):
        remat_policy("some")


class _Affine(nn.Module):
    """y = x * w + shift + extra (w per layer, shift broadcast, extra scanned); outputs sum(y)."""

    @nn.compact
    def __call__(self, x, shift, extra):
        w = self.param("w", nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)), (x.shape[-1],))
        y = x * w + shift + extra
        return y, y.sum()


class _Stack(nn.Module):
    scan: bool
    num_used: int = 3
    remat: str = "none"

    @nn.compact
    def __call__(self, x, shift, extra):
        return run_layers(_Affine, {}, 3, x, (shift,), (extra,), scan=self.scan, initializing=self.is_initializing(),
                          remat=self.remat, num_used=self.num_used)


def _hand(num_used):
    """x = [1, 1], w_i = i + 2 (2, 3, 4), shift 1, extra_i = 10 i."""
    x, outs = np.array([1.0, 1.0]), []
    for i in range(num_used):
        x = x * (i + 2) + 1 + 10 * i
        outs.append(x.sum())
    return x, outs


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("num_used,remat", [(3, "none"), (2, "none"), (3, "full"), (1, "dots")])
def test_run_layers_hand_values(scan, num_used, remat):
    x, shift, extra = jnp.ones((2,)), jnp.float32(1.0), jnp.arange(3, dtype=jnp.float32) * 10
    module = _Stack(scan, num_used, remat)
    boxed = module.init(jax.random.key(0), x, shift, extra)["params"]
    if scan:  # every layer exists, stacked under `layers` with a leading logical `layers` axis
        assert boxed["layers"]["w"].names == ("layers", "embed") and boxed["layers"]["w"].value.shape == (3, 2)
        params = {"layers": {"w": jnp.array([[2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])}}
    else:
        assert sorted(boxed) == ["layers_0", "layers_1", "layers_2"]
        params = {f"layers_{i}": {"w": jnp.full((2,), i + 2.0)} for i in range(3)}
    y, outs = jax.jit(lambda p: module.apply({"params": p}, x, shift, extra))(params)
    want_y, want_outs = _hand(num_used)
    np.testing.assert_array_equal(np.asarray(y), want_y)
    np.testing.assert_array_equal(np.asarray(outs), want_outs)
    # gradients flow through (remat or not) and only into the layers that ran
    g = jax.jit(jax.grad(lambda p: module.apply({"params": p}, x, shift, extra)[0].sum()))(params)
    gw = np.asarray(g["layers"]["w"]) if scan else np.stack([np.asarray(g[f"layers_{i}"]["w"]) for i in range(3)])
    assert (gw[:num_used] != 0).all() and (gw[num_used:] == 0).all()
