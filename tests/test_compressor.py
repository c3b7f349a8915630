"""compressor.py against `torch.nn.MultiheadAttention(d, 8, batch_first=True)` + torch LayerNorms assembled
as SPEC A §3 says, the fixtures' pos-embed tables and hand values.

Tolerances: outputs and head-averaged attention weights atol = rtol = 1e-5 (float32, O(1) values);
sin-cos tables atol 1e-6.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import fixture_data
from llava_mini_jax.compressor import Compressor, sincos_pos_embed

D, HEADS = 32, 8
TOL = dict(atol=1e-5, rtol=1e-5)


class TorchCompressor(torch.nn.Module):
    """The reference Resampler's numerics, written from SPEC A §3 with torch building blocks."""

    def __init__(self, d, size, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q = size * size
        self.size = size
        self.query = torch.nn.Parameter(torch.randn(q, d, generator=g))
        self.register_buffer("pos_embed", torch.from_numpy(sincos_pos_embed(d, size)))
        self.ln_q, self.ln_kv = torch.nn.LayerNorm(d, eps=1e-5), torch.nn.LayerNorm(d, eps=1e-5)
        self.attn = torch.nn.MultiheadAttention(d, HEADS, batch_first=True)
        with torch.no_grad():  # O(1) activations so every part matters
            for ln in (self.ln_q, self.ln_kv):
                ln.weight.copy_(1 + 0.1 * torch.randn(d, generator=g))
                ln.bias.copy_(0.1 * torch.randn(d, generator=g))
            self.attn.in_proj_weight.copy_(torch.randn(3 * d, d, generator=g) / math.sqrt(d))
            self.attn.in_proj_bias.copy_(0.1 * torch.randn(3 * d, generator=g))
            self.attn.out_proj.weight.copy_(torch.randn(d, d, generator=g) / math.sqrt(d))
            self.attn.out_proj.bias.copy_(0.1 * torch.randn(d, generator=g))

    def key_pos(self, s):
        if s == self.size:
            return self.pos_embed
        d = self.pos_embed.shape[1]
        grid = self.pos_embed.reshape(self.size, self.size, d).permute(2, 0, 1)[None]
        return F.interpolate(grid, size=(s, s), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(
            s * s, d)

    def forward(self, x):
        s = math.isqrt(x.shape[1])
        kv = self.ln_kv(x)
        q = self.ln_q(self.query)[None].expand(x.shape[0], -1, -1)
        return self.attn(q + self.pos_embed, kv + self.key_pos(s), kv)  # (out, head-averaged weights)


def _params(tc: TorchCompressor) -> dict:
    """torch state -> our param tree (an independent rewrite of the packed in_proj layout)."""
    t = {k: v.detach().numpy() for k, v in tc.state_dict().items()}
    d = t["query"].shape[1]
    hd = d // HEADS
    w, b = t["attn.in_proj_weight"], t["attn.in_proj_bias"]
    p = {"query": t["query"], "pos_embed": t["pos_embed"],
         "ln_q": {"scale": t["ln_q.weight"], "bias": t["ln_q.bias"]},
         "ln_kv": {"scale": t["ln_kv.weight"], "bias": t["ln_kv.bias"]},
         "out_proj": {"kernel": t["attn.out_proj.weight"].T.reshape(HEADS, hd, d), "bias": t["attn.out_proj.bias"]}}
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        p[name] = {"kernel": w[j * d:(j + 1) * d].T.reshape(d, HEADS, hd),
                   "bias": b[j * d:(j + 1) * d].reshape(HEADS, hd)}
    return jax.tree.map(jnp.asarray, p)


@pytest.mark.parametrize("size,side", [(1, 4), (2, 4), (2, 2), (3, 5)],
                         ids=["C1-resize", "C2-resize", "C2-same", "C3-resize-odd"])
def test_matches_torch_multihead_attention(size, side):
    tc = TorchCompressor(D, size, seed=size * 10 + side)
    x = torch.randn(2, side * side, D, generator=torch.Generator().manual_seed(side))
    want_out, want_attn = (a.detach().numpy() for a in tc(x))
    module = Compressor(D, size, HEADS)
    params = _params(tc)
    # our param tree has exactly the module's structure and shapes
    init = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, side * side, D)))["params"]
    from flax import linen as nn
    assert jax.tree.map(lambda a: a.shape, nn.unbox(init)) == jax.tree.map(lambda a: a.shape, params)
    out, attn = jax.jit(module.apply)({"params": params}, jnp.asarray(x.numpy()))
    assert out.shape == (2, size * size, D) and attn.shape == (2, size * size, side * side)
    np.testing.assert_allclose(np.asarray(out), want_out, **TOL)
    np.testing.assert_allclose(np.asarray(attn), want_attn, **TOL)
    np.testing.assert_allclose(np.asarray(attn).sum(-1), 1.0, atol=1e-5)


def test_value_gets_no_pos_embed_and_key_does():
    """Guards the assembly: moving the key pos-embed onto the value, or dropping it, changes the output."""
    tc = TorchCompressor(D, 2, seed=3)
    x = torch.randn(1, 16, D, generator=torch.Generator().manual_seed(0))
    ours = np.asarray(jax.jit(Compressor(D, 2, HEADS).apply)({"params": _params(tc)}, jnp.asarray(x.numpy()))[0])
    kv = tc.ln_kv(x)
    q = tc.ln_q(tc.query)[None] + tc.pos_embed
    for key, value in ((kv, kv + tc.key_pos(4)), (kv, kv)):
        other = tc.attn(q, key, value)[0].detach().numpy()
        assert np.abs(ours - other).max() > 1e-3


@pytest.mark.parametrize("size,side", [(2, 4), (2, 2)], ids=["resize", "same"])
def test_pos_embed_gradient_matches_torch(size, side):
    """`pos_embed` is an ordinary parameter (SPEC D15: the reference trains it in stage 2): its gradient,
    through the queries and the bicubic-resized key table, is torch's (atol = rtol = 1e-5)."""
    tc = TorchCompressor(D, size, seed=4)
    tc.pos_embed = torch.nn.Parameter(tc.pos_embed.clone())
    x = torch.randn(2, side * side, D, generator=torch.Generator().manual_seed(1))
    w = torch.randn(2, size * size, D, generator=torch.Generator().manual_seed(2))
    (tc(x)[0] * w).sum().backward()
    params = _params(tc)
    grad = jax.jit(jax.grad(lambda p: (Compressor(D, size, HEADS).apply({"params": p}, jnp.asarray(x.numpy()))[0]
                                       * jnp.asarray(w.numpy())).sum()))(params)
    want = tc.pos_embed.grad.numpy()
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(np.asarray(grad["pos_embed"]), want, **TOL)
    np.testing.assert_allclose(np.asarray(grad["query"]), tc.query.grad.numpy(), **TOL)


def test_init_pos_embed_is_the_sincos_table_and_shapes():
    variables = jax.jit(Compressor(D, 2, HEADS).init)(jax.random.key(0), jnp.zeros((1, 9, D)))
    from flax import linen as nn
    p = nn.unbox(variables["params"])
    np.testing.assert_array_equal(np.asarray(p["pos_embed"]), sincos_pos_embed(D, 2))
    assert p["query"].shape == (4, D) and p["q_proj"]["kernel"].shape == (D, HEADS, D // HEADS)
    np.testing.assert_array_equal(np.asarray(p["ln_q"]["scale"]), np.ones(D))
    bound = math.sqrt(6 / (4 * D))  # xavier-uniform of the packed [3d, d] in_proj
    assert float(jnp.abs(p["k_proj"]["kernel"]).max()) <= bound


@pytest.mark.parametrize("name", ["std", "hd"])
def test_sincos_matches_fixture_tables(name):
    meta, _, E, _ = fixture_data(name)
    q = E["compressor_query_pos_embed"]
    size = math.isqrt(q.shape[0])
    np.testing.assert_allclose(sincos_pos_embed(q.shape[1], size), q, atol=1e-6, rtol=0)
    # the key table is the query table resized to the patch grid (the fixture's own resize)
    from llava_mini_jax.interpolate import resize_grid_bicubic
    side = math.isqrt(E["compressor_key_pos_embed"].shape[0])
    key = np.asarray(resize_grid_bicubic(jnp.asarray(q.reshape(size, size, -1)), side)).reshape(side * side, -1)
    np.testing.assert_allclose(key, E["compressor_key_pos_embed"], atol=1e-5, rtol=1e-5)


def test_sincos_hand_values():
    """dim 8: w = [1, 10000^(-1/2)] = [1, 0.01]; row y*2+x = [sin xw, cos xw, sin yw, cos yw];
    the first half is the column x (SPEC Q16)."""
    t = sincos_pos_embed(8, 2)
    s1, c1, s2, c2 = math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)
    want = [[0, 0, 1, 1, 0, 0, 1, 1],
            [s1, s2, c1, c2, 0, 0, 1, 1],  # (y=0, x=1)
            [0, 0, 1, 1, s1, s2, c1, c2],  # (y=1, x=0)
            [s1, s2, c1, c2, s1, s2, c1, c2]]
    assert t.shape == (4, 8) and t.dtype == np.float32
    np.testing.assert_allclose(t, want, atol=1e-7)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed(6, 2)


def test_bad_inputs_raise():
    module = Compressor(D, 2, HEADS)
    with pytest.raises(ValueError, match="not a square grid"):
        module.init(jax.random.key(0), jnp.zeros((1, 17, D)))
    with pytest.raises(ValueError, match="width 16 != compressor width 32"):
        module.init(jax.random.key(0), jnp.zeros((1, 16, 16)))
