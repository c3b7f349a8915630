"""Our orbax params format: writer/reader round trips, orbax compatibility both ways, and
loading through `load_pretrained` (`JaxSource` + `stream_params`) into shardings and across layer layouts."""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import FIXTURES
from convert.hf_to_jax import convert_hf_to_jax
from llava_mini_jax import load_pretrained
from llava_mini_jax.jax_checkpoint import (CHUNK_BYTES, PARAMS_DIR, ParamsReader, ParamsWriter, chunk_shape,
                                           is_jax_checkpoint)
from llava_mini_jax.sharding import logical_shardings, make_mesh

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]


def _tree(dtype, rng=np.random.default_rng(0)):
    """A small params-like tree: a stacked leaf (`layers`), plain leaves of several ranks."""
    return {
        ("enc", "layers", "w"): rng.standard_normal((3, 4, 5)).astype(dtype),
        ("enc", "layers", "b"): rng.standard_normal((3, 5)).astype(dtype),
        ("emb", "embedding"): rng.standard_normal((7, 4)).astype(dtype),
        ("head",): rng.standard_normal((2, 3, 4, 5)).astype(dtype),
    }


def _write(directory, tree, order=None):
    w = ParamsWriter(directory, {p: (a.shape, a.dtype, "layers" in p) for p, a in tree.items()})
    for p in order or list(tree):
        a = tree[p]
        if "layers" in p:
            for i in reversed(range(a.shape[0])):  # any order
                w.write(p, a[i], layer=i)
        else:
            w.write(p, a)
    w.finish()


def _nested(flat):
    out: dict = {}
    for p, v in flat.items():
        node = out
        for k in p[:-1]:
            node = node.setdefault(k, {})
        node[p[-1]] = v
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_writer_reader_round_trip(tmp_path, dtype):
    tree = _tree(dtype)
    _write(tmp_path / "p", tree, order=list(tree)[::-1])
    r = ParamsReader(tmp_path / "p")
    assert set(r.paths) == set(tree) and not r.use_ocdbt
    for p, a in tree.items():
        assert r.shape_dtype(p) == (a.shape, a.dtype)
        got = r.read(p)
        assert got.dtype == a.dtype and got.tobytes() == a.tobytes()
        if "layers" in p:
            assert r.read(p, 1).tobytes() == a[1].tobytes()


def test_plain_orbax_restores_our_layout(tmp_path):
    tree = _tree(np.dtype(ml_dtypes.bfloat16))
    _write(tmp_path / "p", tree)
    plain = ocp.PyTreeCheckpointer().restore(tmp_path / "p")
    for p, a in tree.items():
        v = plain
        for k in p:
            v = v[k]
        assert np.asarray(v).tobytes() == a.tobytes()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = _nested({p: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device) for p, a in tree.items()})
    std = ocp.StandardCheckpointer().restore(tmp_path / "p", target)
    assert np.asarray(std["enc"]["layers"]["w"]).tobytes() == tree[("enc", "layers", "w")].tobytes()


def test_reader_reads_orbax_saved_checkpoints(tmp_path):
    """A training CheckpointManager's params item (orbax's default OCDBT layout) reads leaf by leaf."""
    tree = _tree(np.dtype(np.float16))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "params", _nested({p: jnp.asarray(a) for p, a in tree.items()}))
    ckptr.wait_until_finished()
    r = ParamsReader(tmp_path / "params")
    assert r.use_ocdbt and set(r.paths) == set(tree)
    for p, a in tree.items():
        assert r.read(p).tobytes() == a.tobytes()
    assert r.read(("enc", "layers", "w"), 2).tobytes() == tree[("enc", "layers", "w")][2].tobytes()


def _boxes(shape):
    halves = [tuple((j * (n // 2), (j + 1) * (n // 2)) if a == ax else (0, m) for a, m in enumerate(shape))
              for ax, n in enumerate(shape) if n % 2 == 0 for j in range(2)]
    return [tuple((0, n) for n in shape), tuple((1, n) for n in shape)] + halves


def test_read_box_of_our_layout_reads_only_the_box(tmp_path, monkeypatch):
    """Boxes across several chunks per axis (chunks forced small) read exactly their bytes."""
    monkeypatch.setattr("llava_mini_jax.jax_checkpoint.CHUNK_BYTES", 12)
    tree = _tree(np.dtype(np.float32))
    _write(tmp_path / "p", tree)
    assert json.loads((tmp_path / "p" / "head" / ".zarray").read_text())["chunks"] == [1, 1, 1, 3]  # edge chunks padded
    r = ParamsReader(tmp_path / "p")
    for p, a in tree.items():
        for box in _boxes(a.shape):
            before = r.bytes_read
            got = r.read_box(p, box)
            want = a[tuple(slice(s, e) for s, e in box)]
            assert got.tobytes() == want.tobytes(), (p, box)
            assert r.bytes_read - before == want.nbytes


def test_read_box_of_orbax_saved_checkpoints(tmp_path):
    tree = _tree(np.dtype(np.float16))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "params", _nested({p: jnp.asarray(a) for p, a in tree.items()}))
    ckptr.wait_until_finished()
    r = ParamsReader(tmp_path / "params")
    for p, a in tree.items():
        for box in _boxes(a.shape):
            assert r.read_box(p, box).tobytes() == a[tuple(slice(s, e) for s, e in box)].tobytes()


def test_writer_errors_and_incomplete_checkpoints(tmp_path):
    a = np.zeros((2, 3), np.float32)
    w = ParamsWriter(tmp_path / "p", {("x", "layers", "k"): ((2, 3), np.float32, True),
                                      ("y",): ((3,), np.float32, False)})
    with pytest.raises(KeyError, match="z"):
        w.write(("z",), a)
    with pytest.raises(ValueError, match=r"y: got \(2, 3\) float32, expected \(3,\)"):
        w.write(("y",), a)
    with pytest.raises(ValueError, match="x.layers.k"):
        w.write(("x", "layers", "k"), a)  # a stacked leaf is written layer by layer
    w.write(("x", "layers", "k"), a[0], layer=0)
    with pytest.raises(ValueError, match="layer=0"):
        w.write(("x", "layers", "k"), a[0], layer=0)
    with pytest.raises(ValueError, match=r"2 params were not written: \['x.layers.k \(layers \[1\]\)', 'y'\]"):
        w.finish()
    with pytest.raises(FileNotFoundError, match="_METADATA"):
        ParamsReader(tmp_path / "p")


def test_chunk_shape():
    assert chunk_shape((32, 4096, 14336), 2, stacked=True) == [1, 4096, 14336]  # one layer: 117 MB
    assert chunk_shape((32, 8192, 14336), 2, stacked=True) == [1, 4096, 14336]
    assert chunk_shape((4, 5), 4, stacked=False) == [4, 5]
    big = chunk_shape((128256, 4096), 2, stacked=False)
    assert np.prod(big) * 2 <= CHUNK_BYTES and big[1] == 4096


# -- JaxSource + stream_params through load_pretrained --------------------------------------------------
@pytest.fixture(scope="module")
def std_jax(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return (convert_hf_to_jax(FIXTURES / "std" / "hf", d / "scanned"),
            convert_hf_to_jax(FIXTURES / "std" / "hf", d / "unscanned", scan_layers=False))


def _equal_trees(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [k for k, _ in fa] == [k for k, _ in fb]
    for (k, x), (_, y) in zip(fa, fb):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(k)


def test_converted_directory_layout(std_jax):
    scanned, unscanned = std_jax
    assert is_jax_checkpoint(scanned)
    assert sorted(os.listdir(scanned)) == ["config.json", "generation_config.json", PARAMS_DIR,
                                           "preprocessor_config.json"]
    config = json.loads(open(os.path.join(scanned, "config.json")).read())
    source = json.loads((FIXTURES / "std" / "hf" / "config.json").read_text())
    clip = json.loads((FIXTURES / "std" / "hf" / "clip" / "config.json").read_text())
    assert config == {**source, "vision_config": clip}
    assert any(p[:3] == ("llm", "decoder", "layers") for p in ParamsReader(os.path.join(scanned, PARAMS_DIR)).paths)
    assert any("layers_1" in p for p in ParamsReader(os.path.join(unscanned, PARAMS_DIR)).paths)


def test_restore_matches_hf_loading(std_jax):
    _, want = load_pretrained(FIXTURES / "std" / "hf")
    _, got = load_pretrained(std_jax[0])
    _equal_trees(got, want)


def test_restore_into_mesh_and_shardings(std_jax):
    mesh = make_mesh((1, 2, 4))
    model, got = load_pretrained(std_jax[0], dtype=jnp.bfloat16, mesh=mesh)
    _, want = load_pretrained(FIXTURES / "std" / "hf", dtype=jnp.bfloat16)
    _equal_trees(got, want)
    from llava_mini_jax.loading import abstract_params
    expected = logical_shardings(abstract_params(model), mesh)
    jax.tree.map(lambda a, s: (a.sharding == s) or pytest.fail(f"{a.sharding} != {s}"), got, expected)
    emb = got["llm"]["embed_tokens"]["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert {s.data.shape for s in emb.addressable_shards} == {(80, 32)}  # each device holds its slice only
    replicated = jax.tree.map(lambda a: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), got)
    _, again = load_pretrained(std_jax[0], dtype=jnp.bfloat16, shardings=replicated)
    assert again["llm"]["lm_head"].sharding.spec == jax.sharding.PartitionSpec()
    _equal_trees(again, want)


@pytest.mark.parametrize("stored,scan", [(0, False), (1, True)], ids=["scanned->unscanned", "unscanned->scanned"])
def test_restore_across_layer_layouts(std_jax, stored, scan):
    _, want = load_pretrained(FIXTURES / "std" / "hf", scan_layers=scan)
    _, got = load_pretrained(std_jax[stored], scan_layers=scan)
    _equal_trees(got, want)


def test_restore_rejects_shapes_that_disagree_with_config(std_jax, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(std_jax[0], d)
    config = json.loads((d / "config.json").read_text())
    config["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"llm.decoder.layers.mlp.down_proj.kernel has shape \(2, 128, 64\), but "
                                         r"config.json gives \(2, 96, 64\)"):
        load_pretrained(d)


# -- damaged checkpoints: one line naming the param, the file and the cause -----------------------------
def _damaged(std_jax, tmp_path, damage):
    d = tmp_path / "damaged"
    shutil.copytree(std_jax[0], d)
    damage(d / PARAMS_DIR)
    return d


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_missing_chunk_file(std_jax, tmp_path):
    d = _damaged(std_jax, tmp_path, lambda p: (p / "llm.lm_head" / "0.0").unlink())
    with pytest.raises(FileNotFoundError) as e:
        load_pretrained(d)
    assert "param llm.lm_head: chunk file " in _one_line(e) and "0.0 is missing" in str(e.value)


def test_truncated_chunk_file(std_jax, tmp_path):
    def cut(p):
        f = p / "llm.decoder.layers.mlp.up_proj.kernel" / "1.0.0"
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError) as e:
        load_pretrained(_damaged(std_jax, tmp_path, cut))
    assert "param llm.decoder.layers.mlp.up_proj.kernel: chunk file" in _one_line(e)
    assert "1.0.0 has 100 bytes, expected" in str(e.value) and "truncated" in str(e.value)


def test_damaged_metadata_files(std_jax, tmp_path):
    d = _damaged(std_jax, tmp_path, lambda p: (p / "llm.norm.scale" / ".zarray").write_text("{oops"))
    with pytest.raises(ValueError, match=r"llm.norm.scale/.zarray is damaged \(JSONDecodeError") as e:
        load_pretrained(d)
    _one_line(e)
    (d / PARAMS_DIR / "_METADATA").write_text('{"tree_metadata": 3}')
    with pytest.raises(ValueError, match=r"_METADATA is damaged \(not orbax tree metadata") as e:
        load_pretrained(d)
    _one_line(e)


def test_damaged_training_checkpoint_is_one_line(tmp_path):
    """orbax's OCDBT layout (tensorstore): the cause in one line, not tensorstore's multi-line dump."""
    tree = _tree(np.dtype(np.float16))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "params", _nested({p: jnp.asarray(a) for p, a in tree.items()}))
    ckptr.wait_until_finished()
    for f in (tmp_path / "params").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # OCDBT data files
            f.write_bytes(f.read_bytes()[:10])
    r = ParamsReader(tmp_path / "params")
    with pytest.raises(ValueError, match=r"param (enc|emb|head)\S* cannot be (read|opened): ") as e:
        for p in tree:
            r.read(p)
    _one_line(e)
