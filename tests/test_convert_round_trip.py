"""HF -> JAX -> HF: bit-exact on every fixture and for fp16 / bf16 / sharded / `.bin` sources
built here; dtype casts; vision weights from the tower; converted checkpoints give the fixtures'
logits through `load_pretrained`."""
from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from conftest import FIXTURES, MODEL_FIXTURES, assert_close, fixture_data, japply
from convert.hf_to_jax import convert_hf_to_jax
from convert.hf_writer import write_hf_weights
from convert.jax_to_hf import convert_jax_to_hf
from convert.jax_to_hf import main as jax_to_hf_main
from llava_mini_jax import load_pretrained
from llava_mini_jax.jax_checkpoint import PARAMS_DIR, ParamsReader
from llava_mini_jax.safetensors_io import INDEX_NAME, CheckpointReader


def hf_tensors(directory) -> dict:
    r = CheckpointReader(directory)
    try:
        return {n: r.read(n) for n in r.names()}
    finally:
        r.close()


def assert_same_tensors(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert got[k].tobytes() == want[k].tobytes(), k


def make_source(tmp, tensors: dict, config: dict, max_bytes=10 ** 12, clip=True) -> str:
    """An HF directory holding `tensors` (sharded when they exceed `max_bytes`) and the std CLIP."""
    d = tmp / "src"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    if clip:
        shutil.copytree(FIXTURES / "std" / "hf" / "clip", d / "clip")
    specs = [(n, a.shape, a.dtype) for n, a in tensors.items()]
    write_hf_weights(str(d), specs, tensors.__getitem__, max_bytes)
    return str(d)


def std_config() -> dict:
    return json.loads((FIXTURES / "std" / "hf" / "config.json").read_text())


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_fixture_round_trip_is_bit_exact(tmp_path, name):
    src = FIXTURES / name / "hf"
    convert_hf_to_jax(src, tmp_path / "jax")
    convert_jax_to_hf(tmp_path / "jax", tmp_path / "hf")
    assert_same_tensors(hf_tensors(tmp_path / "hf"), hf_tensors(src))
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    assert (tmp_path / "hf" / "generation_config.json").read_bytes() == (src / "generation_config.json").read_bytes()


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32], ids=["float16", "bfloat16", "float32"])
def test_sharded_low_precision_round_trip(tmp_path, dtype):
    tensors = {k: v.astype(dtype) for k, v in hf_tensors(FIXTURES / "std" / "hf").items()}
    src = make_source(tmp_path, tensors, std_config(), max_bytes=100_000)
    assert os.path.exists(os.path.join(src, INDEX_NAME))
    convert_hf_to_jax(src, tmp_path / "jax")
    reader = ParamsReader(tmp_path / "jax" / PARAMS_DIR)
    assert {reader.shape_dtype(p)[1] for p in reader.paths} == {np.dtype(dtype)}
    convert_jax_to_hf(tmp_path / "jax", tmp_path / "hf", max_shard_size="150KB")
    index = json.loads((tmp_path / "hf" / INDEX_NAME).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in tensors.values())
    largest = max(a.nbytes for a in tensors.values())
    assert all(os.path.getsize(tmp_path / "hf" / f) <= max(150_000, largest) + 20_000 for f in files)
    assert_same_tensors(hf_tensors(tmp_path / "hf"), tensors)


def test_dtype_casts(tmp_path):
    src = FIXTURES / "hd" / "hf"
    convert_hf_to_jax(src, tmp_path / "jax", dtype="bfloat16")
    assert json.loads((tmp_path / "jax" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    convert_jax_to_hf(tmp_path / "jax", tmp_path / "hf", dtype="float32")
    want = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in hf_tensors(src).items()}
    assert_same_tensors(hf_tensors(tmp_path / "hf"), want)
    convert_jax_to_hf(tmp_path / "jax", tmp_path / "hf16", dtype="float16")
    assert {a.dtype for a in hf_tensors(tmp_path / "hf16").values()} == {np.dtype(np.float16)}
    assert json.loads((tmp_path / "hf16" / "config.json").read_text())["torch_dtype"] == "float16"


def test_pytorch_bin_source_needs_allow_pickle(tmp_path):
    torch = pytest.importorskip("torch")
    tensors = hf_tensors(FIXTURES / "video" / "hf")
    tensors = {k: (v.astype(ml_dtypes.bfloat16) if "layers" in k else v) for k, v in tensors.items()}  # mixed dtypes
    d = tmp_path / "src"
    shutil.copytree(FIXTURES / "video" / "hf", d, ignore=shutil.ignore_patterns("*.safetensors"))
    names = sorted(tensors)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}

    def to_torch(a):
        if a.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(a.copy())
    for file, keys in shards.items():
        torch.save({k: to_torch(tensors[k]) for k in keys}, d / file)
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    with pytest.raises(ValueError, match="--allow-pickle"):
        convert_hf_to_jax(d, tmp_path / "jax")
    assert not (tmp_path / "jax").exists()
    convert_hf_to_jax(d, tmp_path / "jax", allow_pickle=True)
    convert_jax_to_hf(tmp_path / "jax", tmp_path / "hf")
    assert_same_tensors(hf_tensors(tmp_path / "hf"), tensors)


def test_vision_weights_come_from_the_tower_when_absent(tmp_path):
    tensors = hf_tensors(FIXTURES / "std" / "hf")
    src = make_source(tmp_path, {k: v for k, v in tensors.items() if "vision_tower" not in k}, std_config())
    convert_hf_to_jax(src, tmp_path / "jax")
    shutil.rmtree(os.path.join(src, "clip"))  # the JAX directory stands alone
    convert_jax_to_hf(tmp_path / "jax", tmp_path / "hf")
    assert_same_tensors(hf_tensors(tmp_path / "hf"), tensors)


def test_cli_exit_codes(tmp_path, capsys):
    convert_hf_to_jax(FIXTURES / "std" / "hf", tmp_path / "jax")
    (tmp_path / "taken").mkdir()
    assert jax_to_hf_main(["--src", str(tmp_path / "jax"), "--out", str(tmp_path / "taken")]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert jax_to_hf_main(["--src", str(tmp_path / "jax"), "--out", str(tmp_path / "taken"), "--overwrite",
                           "--max-shard-size", "300KB", "--dtype", "bfloat16"]) == 0
    assert (tmp_path / "taken" / INDEX_NAME).exists()


@pytest.mark.parametrize("name", ["std"])  # all five: shared/checks/check_convert.py
def test_converted_checkpoint_reproduces_logits(tmp_path, name):
    convert_hf_to_jax(FIXTURES / name / "hf", tmp_path / "jax")
    model, params = load_pretrained(tmp_path / "jax", dtype=jnp.float32)
    meta, inputs, expected, _ = fixture_data(name)
    for check in meta["checks"]:
        images = None if check["images"] is None else jnp.asarray(inputs[check["images"]], jnp.float32)
        labels = None if check["labels"] is None else jnp.asarray(inputs[check["labels"]], jnp.int32)
        out = japply(model, params, input_ids=jnp.asarray(inputs[check["input_ids"]], jnp.int32),
                     attention_mask=jnp.asarray(inputs[check["attention_mask"]], jnp.int32), images=images,
                     labels=labels)
        mask = expected[check["mask"]].astype(bool)
        for b, n in enumerate(mask.sum(1)):
            assert_close(np.asarray(out.logits)[b, :n], expected[check["logits"]][b, :n], f"{check['name']} row {b}")
        if check.get("loss"):
            assert_close(out.loss, expected[check["loss"]], f"{check['name']} loss")


def test_export_carries_a_relative_vision_tower(tmp_path):
    """`mm_vision_tower: "clip"` (relative): the HF export holds `clip/` with the checkpoint's own CLIP
    tensors, so it loads standing alone (the reference reloads CLIP from there)."""
    from safetensors.numpy import load_file
    convert_hf_to_jax(FIXTURES / "hd" / "hf", tmp_path / "jax")
    convert_jax_to_hf(tmp_path / "jax", tmp_path / "hf")
    got = load_file(str(tmp_path / "hf" / "clip" / "model.safetensors"))
    want = load_file(str(FIXTURES / "hd" / "hf" / "clip" / "model.safetensors"))
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    tower = json.loads((tmp_path / "hf" / "clip" / "config.json").read_text())
    assert tower["model_type"] == "clip_vision_model" and tower["hidden_size"] == 32
    shutil.rmtree(tmp_path / "jax")
    model, params = load_pretrained(tmp_path / "hf")
    assert model.config.vision.num_layers == 3
