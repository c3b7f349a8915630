"""safetensors_io.py: `CheckpointReader` on single-file and sharded directories written here with the
`safetensors` package, and its errors. Exact comparisons."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from llava_mini_jax.safetensors_io import INDEX_NAME, CheckpointReader

RNG = np.random.default_rng(0)
TENSORS = {
    "model.a.weight": RNG.standard_normal((3, 4)).astype(np.float32),
    "model.b.bias": np.arange(5, dtype=np.int64),
    "model.c.weight": RNG.standard_normal((2, 2, 2)).astype(np.float16),
    "lm_head.weight": RNG.standard_normal((6, 3)).astype(np.float32),
}


def _sharded(tmp_path, shards=("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")):
    names = list(TENSORS)
    split = {shards[0]: names[:2], shards[1]: names[2:]}
    for shard, keys in split.items():
        save_file({k: TENSORS[k] for k in keys}, str(tmp_path / shard))
    index = {"metadata": {"total_size": 0}, "weight_map": {k: s for s, keys in split.items() for k in keys}}
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    return split


def _check_all(reader):
    assert sorted(reader.names()) == sorted(TENSORS)
    for name, want in TENSORS.items():
        got = reader.read(name)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_single_file(tmp_path):
    save_file(TENSORS, str(tmp_path / "model.safetensors"))
    with CheckpointReader(tmp_path) as reader:
        _check_all(reader)
        assert reader.shard_files == ["model.safetensors"]
        assert reader.shape_dtype("model.c.weight") == ((2, 2, 2), "F16")
        assert reader.shape_dtype("model.b.bias") == ((5,), "I64")
        with pytest.raises(KeyError, match="'nope' is not in the checkpoint"):
            reader.read("nope")


def test_single_file_with_another_name(tmp_path):
    save_file(TENSORS, str(tmp_path / "weights.safetensors"))
    _check_all(CheckpointReader(str(tmp_path)))


def test_sharded_directory(tmp_path):
    split = _sharded(tmp_path)
    with CheckpointReader(tmp_path) as reader:
        _check_all(reader)
        assert reader.shard_files == sorted(split)
        pairs = list(reader.iter_by_shard())
        assert [s for s, _ in pairs] == sorted(s for s, keys in split.items() for _ in keys)  # grouped by shard
        assert {n for _, n in pairs} == set(TENSORS)
        reader.read("lm_head.weight")
        reader.read("model.a.weight")
        assert len(reader._open) == 1  # one shard mapped at a time
    assert not reader._open  # closed on exit


def test_missing_shard_named_in_index(tmp_path):
    split = _sharded(tmp_path)
    gone = sorted(split)[1]
    (tmp_path / gone).unlink()
    with pytest.raises(FileNotFoundError, match=gone):
        CheckpointReader(tmp_path)


def test_empty_directory_and_ambiguous_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors.index.json and no"):
        CheckpointReader(tmp_path)
    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "a.safetensors"))
    save_file({"y": np.zeros(2, np.float32)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(FileNotFoundError, match="2 safetensors files but no model.safetensors.index.json"):
        CheckpointReader(tmp_path)
    save_file(TENSORS, str(tmp_path / "model.safetensors"))  # then model.safetensors is the checkpoint
    _check_all(CheckpointReader(tmp_path))


def test_writer_output_is_read_back_by_the_safetensors_package(tmp_path):
    """Tensors added out of order, of several dtypes (bfloat16 through ml_dtypes), with metadata: the official
    reader (and a torch load) sees exactly the arrays written."""
    import ml_dtypes
    torch = pytest.importorskip("torch")  # absent where the inference-only set is checked (jax 0.11, no torch)
    from safetensors import safe_open
    from safetensors.torch import load_file as torch_load

    from llava_mini_jax.safetensors_io import SafetensorsWriter, numpy_dtype, safetensors_dtype
    arrays = {**TENSORS, "scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 3), np.float32),
              "bf16": RNG.standard_normal((3, 5)).astype(ml_dtypes.bfloat16)}
    path = tmp_path / "out.safetensors"
    with SafetensorsWriter(path, [(n, a.shape, a.dtype) for n, a in arrays.items()], metadata={"format": "pt"}) as w:
        for name in reversed(list(arrays)):
            w.add(name, arrays[name])
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"format": "pt"}
        assert list(f.keys()) == sorted(arrays)
        for name in TENSORS:
            got = f.get_tensor(name)
            assert got.dtype == arrays[name].dtype
            np.testing.assert_array_equal(got, arrays[name])
    t = torch_load(str(path))
    assert t["bf16"].dtype == torch.bfloat16
    np.testing.assert_array_equal(t["bf16"].float().numpy(), arrays["bf16"].astype(np.float32))
    assert t["scalar"].shape == () and float(t["scalar"]) == 3.5 and tuple(t["empty"].shape) == (0, 3)
    with CheckpointReader(tmp_path) as reader:  # and our own reader, by file name
        np.testing.assert_array_equal(reader.read("model.a.weight"), TENSORS["model.a.weight"])
        assert reader.shape_dtype("bf16") == ((3, 5), "BF16")
    assert safetensors_dtype(np.float16) == "F16" and numpy_dtype("BF16") == np.dtype(ml_dtypes.bfloat16)


def test_read_box_reads_only_the_box(tmp_path):
    save_file(TENSORS, str(tmp_path / "model.safetensors"))
    with CheckpointReader(tmp_path) as reader:
        got = reader.read_box("lm_head.weight", ((2, 5), (1, 3)))
        np.testing.assert_array_equal(got, TENSORS["lm_head.weight"][2:5, 1:3])
        assert reader.bytes_read == 3 * 2 * 4
        reader.read("model.c.weight")
        assert reader.bytes_read == 24 + 8 * 2


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])


def test_truncated_file_names_the_file_and_the_first_cut_tensor(tmp_path):
    save_file(TENSORS, str(tmp_path / "model.safetensors"))
    path = tmp_path / "model.safetensors"
    with CheckpointReader(tmp_path) as reader:
        last = reader.names()[-1]  # storage order
    _truncate(path, -10)
    with pytest.raises(ValueError, match=rf"model.safetensors: truncated: tensor '{last}' ends at byte \d+ but the "
                                         r"file has \d+ bytes"):
        CheckpointReader(tmp_path)
    _truncate(path, 5)
    with pytest.raises(ValueError, match=r"model.safetensors: 5 bytes, too short for a safetensors file"):
        CheckpointReader(tmp_path)


def test_truncated_header_and_garbage(tmp_path):
    save_file(TENSORS, str(tmp_path / "model.safetensors"))
    path = tmp_path / "model.safetensors"
    _truncate(path, 40)
    with pytest.raises(ValueError, match=r"model.safetensors: the header length field says \d+ bytes but the file "
                                         r"has 32 after it"):
        CheckpointReader(tmp_path)
    path.write_bytes((20).to_bytes(8, "little") + b"{not json at all....")
    with pytest.raises(ValueError, match="model.safetensors: the safetensors header is not valid JSON"):
        CheckpointReader(tmp_path)


def test_truncated_shard_of_a_sharded_checkpoint(tmp_path):
    split = _sharded(tmp_path)
    second = sorted(split)[1]
    _truncate(tmp_path / second, -1)
    with pytest.raises(ValueError, match=rf"{second}: truncated: tensor '(lm_head|model.c).weight'"):
        CheckpointReader(tmp_path)


def test_index_naming_a_tensor_its_shard_lacks(tmp_path):
    _sharded(tmp_path)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    index["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors"
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"maps tensor 'model.extra.weight' to model-00001-of-00002.safetensors, "
                                         r"whose header does not have it"):
        CheckpointReader(tmp_path)
