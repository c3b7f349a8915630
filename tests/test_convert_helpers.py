"""Conversion helpers: fast transposes (same values as the rules' own), shard planning and sizes,
the reference's tensor order, side files, staged outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from conftest import FIXTURES
from convert.checkpoint_config import legacy_llm_config
from convert.fast_layout import for_to_hf, for_to_jax, transposed
from convert.hf_writer import parse_size, plan_shards, shard_file_names
from convert.layout import expected_tensors, hf_order
from convert.side_files import copy_side_files
from convert.staging import staged_output
from llava_mini_jax.loading import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_transposed(dtype):
    a = np.random.default_rng(0).standard_normal((37, 19)).astype(dtype)
    assert transposed(a).flags.c_contiguous and np.array_equal(transposed(a), a.T)


def test_fast_layout_gives_the_rules_the_same_values():
    """Every single-leaf rule of the hd fixture (GQA, CLIP, projector): bit-identical outputs with
    the re-ordered inputs, and the rules' transposes become views."""
    cfg, _ = load_config(str(FIXTURES / "hd" / "hf"))
    rng = np.random.default_rng(0)
    views = 0
    for name, e in expected_tensors(cfg).items():
        pl = e.placement
        if len(pl.leaves) != 1:
            continue
        a = rng.standard_normal(e.shape).astype(np.float32)
        leaf = np.ascontiguousarray(pl.rule.to_jax(a)[0])
        fast_in = for_to_jax(a, leaf.shape)
        (fast,) = pl.rule.to_jax(fast_in)
        assert fast.shape == leaf.shape and np.ascontiguousarray(fast).tobytes() == leaf.tobytes(), name
        hf_in = for_to_hf(leaf, e.shape)
        back = pl.rule.to_hf((hf_in,))
        assert back.tobytes() == a.tobytes(), name
        if fast_in is not a:
            assert np.shares_memory(fast, fast_in) and np.shares_memory(back, hf_in), name
            views += 1
    assert views >= 30  # Llama/pre-fusion q,k,v,o,gate,up,down, CLIP q,k,v,out,fc1,fc2, lm_head, ...


def test_parse_size_and_shard_plan():
    assert parse_size("5GB") == 5 * 10 ** 9 and parse_size("2GiB") == 2 << 30 and parse_size("300kb") == 300_000
    assert parse_size(123) == 123 and parse_size("1.5MB") == 1_500_000
    for bad in ("5XB", "-1GB", "0", "GB"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)
    specs = [("a", (10,), np.float32), ("b", (30,), np.float32), ("c", (5,), np.float32), ("d", (5,), np.float32)]
    assert [[s[0] for s in sh] for sh in plan_shards(specs, 60)] == [["a"], ["b"], ["c", "d"]]
    assert shard_file_names(1) == ["model.safetensors"]
    assert shard_file_names(3)[2] == "model-00003-of-00003.safetensors"


def test_reference_order():
    names = ["model.embed_tokens.weight", "model.layers.0.a", "model.layers.1.a", "model.layers.0.b",
             "model.layers.1.b", "model.norm.weight", "model.prefusion_layers.0.a", "model.prefusion_layers.0.b",
             "model.mm_projector.0.weight"]
    assert hf_order(names) == ["model.embed_tokens.weight", "model.layers.0.a", "model.layers.0.b",
                               "model.layers.1.a", "model.layers.1.b", "model.norm.weight",
                               "model.prefusion_layers.0.a", "model.prefusion_layers.0.b",
                               "model.mm_projector.0.weight"]


def test_legacy_llm_config():
    v5 = {"model_type": "llama", "dtype": "bfloat16",
          "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}
    assert legacy_llm_config(v5) == {"model_type": "llama", "torch_dtype": "bfloat16", "rope_theta": 5e5,
                                     "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    plain = legacy_llm_config({"rope_parameters": {"rope_theta": 1e4, "rope_type": "default"}})
    assert plain == {"rope_theta": 1e4, "rope_scaling": None}
    v4 = {"rope_theta": 1e4, "rope_scaling": None, "torch_dtype": "float16"}
    assert legacy_llm_config(v4) == v4


def test_side_files(tmp_path):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for d in (a, b, out):
        d.mkdir()
    for f in ("tokenizer.json", "generation_config.json", "model.safetensors", "notes.txt"):
        (a / f).write_text("a")
    for f in ("preprocessor_config.json", "tokenizer.json"):
        (b / f).write_text("b")
    assert copy_side_files([a, b], out, only=("preprocessor_config.json",)) == \
        ["generation_config.json", "tokenizer.json", "preprocessor_config.json"]
    assert (out / "tokenizer.json").read_text() == "a" and not (out / "model.safetensors").exists()


def test_staged_output(tmp_path):
    out = tmp_path / "out"
    with staged_output(out) as tmp:
        assert os.path.basename(tmp).startswith(".out.tmp-") and not out.exists()
        assert os.path.exists(tmp + ".lock")  # the live folder's lock, beside it
        (open(os.path.join(tmp, "config.json"), "w")).write("1")
    assert (out / "config.json").read_text() == "1" and oct(os.stat(out).st_mode & 0o777) != oct(0o700)
    with pytest.raises(RuntimeError):
        with staged_output(out, overwrite=True) as tmp:
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["out"] and (out / "config.json").read_text() == "1"


def test_benchmark_tiny(tmp_path):
    """benchmarks/conversion.py --tiny: both directions as subprocesses, bound held, bit-exact."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.conversion", "--tiny", "--workdir",
                        str(tmp_path / "work"), "--json", str(tmp_path / "convert.json")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads((tmp_path / "convert.json").read_text())
    assert result["round_trip_bit_exact"] is True and result["shards"] >= 2
    for direction in ("hf_to_jax", "jax_to_hf"):
        assert result[direction]["within_bound"] and result[direction]["peak_rss_gb"] < result["rss_bound_gb"]
