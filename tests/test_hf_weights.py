"""hf_weights.py: HF -> params -> HF is bit-exact on every fixture checkpoint (scanned and unscanned), every
tensor is consumed exactly once, every param leaf is written exactly once, and the layouts are the ones
SPEC A §1 describes (checked by hand on single tensors). Exact comparisons throughout."""
from __future__ import annotations

import dataclasses
import functools
from collections import Counter

import jax
import numpy as np
import pytest
from flax import linen as nn

from conftest import FIXTURES, MODEL_FIXTURES
from llava_mini_jax import LlavaMini
from llava_mini_jax.hf_weights import hf_to_params, params_to_hf, placements, weight_rules
from llava_mini_jax.loading import abstract_params, load_config
from llava_mini_jax.safetensors_io import CheckpointReader


@functools.lru_cache(maxsize=None)
def _setup(name: str, scan: bool):
    path = FIXTURES / name / "hf"
    cfg, _ = load_config(str(path))
    shapes = jax.tree.map(lambda a: tuple(a.shape), nn.unbox(abstract_params(LlavaMini(cfg, scan_layers=scan))))
    with CheckpointReader(path) as reader:
        tensors = {n: reader.read(n) for n in reader.names()}
    return cfg, shapes, tensors


@functools.lru_cache(maxsize=None)
def _params(name: str, scan: bool):
    cfg, shapes, tensors = _setup(name, scan)
    reads = Counter()

    def read(n):
        reads[n] += 1
        return tensors[n]
    return hf_to_params(read, cfg, shapes), reads


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unscanned"])
@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_round_trip_is_bit_exact_and_covers_every_tensor_once(name, scan):
    cfg, shapes, tensors = _setup(name, scan)
    params, reads = _params(name, scan)
    assert set(reads) == set(tensors), "rules and checkpoint disagree"
    assert set(reads.values()) == {1}, [n for n, c in reads.items() if c != 1]
    assert jax.tree.map(np.shape, params) == shapes  # every param leaf filled, with the model's shape
    back = list(params_to_hf(params, cfg))
    assert len(back) == len({n for n, _ in back}) == len(tensors)
    for n, a in back:
        assert a.dtype == tensors[n].dtype and a.shape == tensors[n].shape, n
        np.testing.assert_array_equal(a, tensors[n], err_msg=n)


@pytest.mark.parametrize("name", ["hd", "baseline"])
def test_every_param_slot_is_written_exactly_once(name):
    for scan in (True, False):
        cfg, shapes, _ = _setup(name, scan)
        slots = Counter()
        for pl in placements(cfg, scan):
            for leaf in pl.leaves:
                slots[(leaf, pl.layer)] += 1
        assert set(slots.values()) == {1}
        want = set()
        for path, shape in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]:
            leaf = tuple(k.key for k in path)
            stacked = scan and "layers" in leaf
            want |= {(leaf, i) for i in range(shape[0])} if stacked else {(leaf, None)}
        assert set(slots) == want


def test_scanned_and_unscanned_hold_the_same_layers():
    scanned, _ = _params("hd", True)
    unscanned, _ = _params("hd", False)
    for top in (("llm", "decoder"), ("prefusion",), ("vision_tower",)):
        s, u = scanned, unscanned
        for k in top:
            s, u = s[k], u[k]
        n = len([k for k in u if k.startswith("layers_")])
        assert n >= 2
        for i in range(n):
            jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[i], b), s["layers"], u[f"layers_{i}"])


def test_layouts_by_hand():
    """SPEC A §1: HF Linear weights are [out, in]; ours [in, out] split per head."""
    cfg, _, t = _setup("hd", True)
    p, _ = _params("hd", True)
    llm, v = cfg.llm, cfg.vision
    d_model, hd = llm.hidden_size, llm.head_dim
    q = t["model.layers.1.self_attn.q_proj.weight"]  # [H*hd, D]
    got_q = p["llm"]["decoder"]["layers"]["self_attn"]["q_proj"]["kernel"][1]  # [D, H, hd]
    for h in range(llm.num_heads):
        np.testing.assert_array_equal(got_q[:, h, :], q[h * hd:(h + 1) * hd].T)
    k = t["model.prefusion_layers.0.self_attn.k_proj.weight"]  # GQA: [KV*hd, D]
    assert p["prefusion"]["layers"]["self_attn"]["k_proj"]["kernel"].shape[1:] == (d_model, llm.num_kv_heads, hd)
    np.testing.assert_array_equal(p["prefusion"]["layers"]["self_attn"]["k_proj"]["kernel"][0, :, 1, :],
                                  k[hd:2 * hd].T)
    o = t["model.layers.0.self_attn.o_proj.weight"]  # [D, H*hd]
    np.testing.assert_array_equal(p["llm"]["decoder"]["layers"]["self_attn"]["o_proj"]["kernel"][0, 2],
                                  o[:, 2 * hd:3 * hd].T)
    np.testing.assert_array_equal(p["llm"]["lm_head"], t["lm_head.weight"].T)
    # compressor: packed in_proj rows [0:d] = W_q, [d:2d] = W_k, [2d:3d] = W_v; 8 heads of d/8
    d = v.hidden_size
    w, b = t["model.compressor.attn.in_proj_weight"], t["model.compressor.attn.in_proj_bias"]
    for j, n in enumerate(("q_proj", "k_proj", "v_proj")):
        np.testing.assert_array_equal(p["compressor"][n]["kernel"].reshape(d, d), w[j * d:(j + 1) * d].T)
        np.testing.assert_array_equal(p["compressor"][n]["bias"].reshape(d), b[j * d:(j + 1) * d])
    assert p["compressor"]["q_proj"]["kernel"].shape == (d, 8, d // 8)
    # projector mlp2x_gelu: mm_projector.0 and .2 (odd indices are the GELUs)
    np.testing.assert_array_equal(p["mm_projector"]["linear_1"]["kernel"], t["model.mm_projector.2.weight"].T)
    # CLIP patch conv [d, 3, p, p] -> [3, p, p, d]
    conv = t["model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"]
    np.testing.assert_array_equal(p["vision_tower"]["patch_embedding"][:, 1, 2, 5], conv[5, :, 1, 2])


def test_rule_names_follow_config():
    cfg, _, _ = _setup("std", True)
    names = lambda c: {r.hf_name for r in weight_rules(c)}  # noqa: E731
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.bias"} <= names(cfg)
    linear = dataclasses.replace(cfg, projector_type="linear")
    assert {"model.mm_projector.weight", "model.mm_projector.bias"} <= names(linear)
    assert not any(n.startswith("model.mm_projector.0") for n in names(linear))
    assert "model.mm_projector.4.weight" in names(dataclasses.replace(cfg, projector_type="mlp3x_gelu"))
    tied = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, tie_word_embeddings=True))
    assert "lm_head.weight" in names(cfg) and "lm_head.weight" not in names(tied)
    base, _, _ = _setup("baseline", True)
    assert not any("compressor" in n or "prefusion" in n for n in names(base))
    per_layer = [pl.hf_name for pl in placements(cfg) if pl.hf_name.startswith("model.layers.")]
    assert len(per_layer) == 9 * cfg.llm.num_layers


def test_wrong_shape_raises_naming_the_tensor():
    cfg, shapes, tensors = _setup("std", True)
    bad = "model.layers.1.mlp.up_proj.weight"

    def read(n):
        return tensors[n][:-1] if n == bad else tensors[n]
    with pytest.raises(ValueError, match=rf"{bad}: shape \(127, 64\) \(as \(64, 127\)\) does not fit param "
                                         r"llm/decoder/layers/mlp/up_proj/kernel"):
        hf_to_params(read, cfg, shapes)


def test_dtype_cast():
    cfg, shapes, tensors = _setup("std", False)
    params = hf_to_params(tensors.__getitem__, cfg, shapes, dtype=np.float16)
    assert {a.dtype for a in jax.tree.leaves(params)} == {np.dtype(np.float16)}
    np.testing.assert_array_equal(params["llm"]["norm"]["scale"], tensors["model.norm.weight"].astype(np.float16))


def _box_cases(shape, rng, n=6):
    """Boxes over `shape`: the whole leaf, halves and quarters along each axis (as a mesh cuts it),
    and random ranges."""
    boxes = [tuple((0, s) for s in shape)]
    for ax, size in enumerate(shape):
        for parts in (2, 4):
            if size % parts == 0 and size > 1:
                k = size // parts
                boxes += [tuple((j * k, (j + 1) * k) if a == ax else (0, s) for a, s in enumerate(shape))
                          for j in range(parts)]
    for _ in range(n):
        box = []
        for s in shape:
            a = int(rng.integers(0, s))
            box.append((a, int(rng.integers(a + 1, s + 1))))
        boxes.append(tuple(box))
    return boxes


@pytest.mark.parametrize("name", ["hd", "baseline"])
def test_leaf_boxes_read_through_layouts_match_the_whole_leaf(name):
    """`LeafLayout.read` of any box of a leaf equals that box of `to_jax`, and reads only the HF
    bytes behind it (whole heads: a box that keeps head_dim whole reads exactly its own size)."""
    cfg, _, tensors = _setup(name, False)
    rng = np.random.default_rng(0)
    for rule in weight_rules(cfg):
        a = tensors[rule.hf_name.format(i=0)]
        leaves = rule.to_jax(a)
        assert len(rule.layouts) == len(leaves)
        for layout, leaf in zip(rule.layouts, leaves):
            assert layout.leaf_shape(a.shape) == leaf.shape
            for box in _box_cases(leaf.shape, rng):
                reads = []

                def read_box(b):
                    reads.append(b)
                    return a[tuple(slice(s, e) for s, e in b)]
                got = layout.read(read_box, a.shape, box)
                want = leaf[tuple(slice(s, e) for s, e in box)]
                np.testing.assert_array_equal(got, want, err_msg=f"{rule.hf_name} {box}")
                assert got.flags.c_contiguous
                read = int(np.prod([e - s for s, e in reads[0]]))
                if layout.split is None or box[layout.split[0] + 1] == (0, leaf.shape[layout.split[0] + 1]):
                    assert read == want.size, (rule.hf_name, box)
