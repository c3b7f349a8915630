"""Clear errors for bad inputs, and no partial output whatever fails."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from conftest import FIXTURES
from convert import sources
from convert.hf_to_jax import convert_hf_to_jax
from convert.hf_to_jax import main as hf_to_jax_main
from convert.jax_to_hf import convert_jax_to_hf
from llava_mini_jax.safetensors_io import SafetensorsWriter
from test_convert_round_trip import hf_tensors, make_source, std_config


def leftovers(directory) -> list:
    """Hidden temporary directories a conversion left behind."""
    return [f for f in os.listdir(directory) if ".tmp-" in f or ".old-" in f]


def test_missing_shard(tmp_path):
    src = make_source(tmp_path, hf_tensors(FIXTURES / "std" / "hf"), std_config(), max_bytes=300_000)
    os.remove(os.path.join(src, "model-00002-of-00004.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"names shard\(s\) that do not exist .*model-00002-of-00004"):
        convert_hf_to_jax(src, tmp_path / "out")


def test_truncated_shard_names_file_and_tensor(tmp_path):
    src = make_source(tmp_path, hf_tensors(FIXTURES / "std" / "hf"), std_config(), max_bytes=300_000)
    shard = os.path.join(src, "model-00003-of-00004.safetensors")
    with open(shard, "rb") as f:
        data = f.read()
    with open(shard, "wb") as f:
        f.write(data[:-1000])
    with pytest.raises(ValueError, match=r"model-00003-of-00004.safetensors: truncated: tensor '[\w.]+' ends at "
                                         r"byte \d+ but the file has \d+ bytes"):
        convert_hf_to_jax(src, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out") and not leftovers(tmp_path)


def test_truncated_single_weights_file_is_named(tmp_path):
    path = tmp_path / "mm_projector.safetensors"
    with SafetensorsWriter(path, [("model.mm_projector.0.weight", (4, 4), np.float32)]) as w:
        w.add("model.mm_projector.0.weight", np.ones((4, 4), np.float32))
    assert sources.open_weights(str(path)).read("model.mm_projector.0.weight").sum() == 16
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"mm_projector.safetensors: truncated: tensor 'model.mm_projector.0.weight'"):
        sources.open_weights(str(path))


@pytest.mark.parametrize("change,message", [
    ("unknown", r"1 unknown tensors \(not part of this model\): \['model.extra.weight'\]"),
    ("missing", r"1 tensors missing: \['model.layers.1.mlp.up_proj.weight'\]"),
    ("shape", r"model.embed_tokens.weight: \(300, 64\) \(config.json gives \(320, 64\)\)"),
])
def test_bad_tensors_are_listed(tmp_path, change, message):
    tensors = hf_tensors(FIXTURES / "std" / "hf")
    if change == "unknown":
        tensors["model.extra.weight"] = np.zeros(3, np.float32)
        tensors["model.rotary_emb.inv_freq"] = np.zeros(3, np.float32)  # known buffer: ignored
    elif change == "missing":
        del tensors["model.layers.1.mlp.up_proj.weight"]
    else:
        tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:300]
    src = make_source(tmp_path, tensors, std_config())
    with pytest.raises(ValueError, match=message):
        convert_hf_to_jax(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_config_that_disagrees_with_the_weights(tmp_path):
    config = std_config()
    config["intermediate_size"] = 96
    src = make_source(tmp_path, hf_tensors(FIXTURES / "std" / "hf"), config)
    with pytest.raises(ValueError, match=r"12 tensors whose shape disagrees with config.json: "
                                         r"\['model.layers.0.mlp.gate_proj.weight: \(128, 64\) "
                                         r"\(config.json gives \(96, 64\)\)"):
        convert_hf_to_jax(src, tmp_path / "out")


@pytest.mark.parametrize("model_type,hint", [("llama", "init_from_parts"), ("qwen2", "expected one of")])
def test_unsupported_model_type(tmp_path, model_type, hint):
    d = tmp_path / "src"
    shutil.copytree(FIXTURES / "std" / "hf", d)
    config = std_config()
    config["model_type"] = model_type
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"unsupported model_type '{model_type}'.*{hint}"):
        convert_hf_to_jax(d, tmp_path / "out")


def test_existing_output_needs_overwrite(tmp_path, capsys, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert_hf_to_jax(FIXTURES / "std" / "hf", out)
    assert (out / "keep.txt").read_text() == "mine"
    assert hf_to_jax_main(["--src", str(FIXTURES / "std" / "hf"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    # not a model directory (no config.json): --overwrite refuses it, naming what it holds
    with pytest.raises(FileExistsError, match=r"not a model directory .* 1 files, 0.0 MB: keep.txt"):
        convert_hf_to_jax(FIXTURES / "std" / "hf", out, overwrite=True)
    (out / "config.json").write_text("{}")
    convert_hf_to_jax(FIXTURES / "std" / "hf", out, overwrite=True)
    assert "--overwrite: " + str(out) + " will be replaced" in caplog.text
    assert "2 files, 0.0 MB: config.json, keep.txt" in caplog.text
    assert not (out / "keep.txt").exists() and (out / "params").is_dir() and not leftovers(tmp_path)


def test_output_that_is_contains_or_lies_inside_the_source_is_refused(tmp_path, capsys):
    from convert.jax_to_hf import main as jax_to_hf_main
    run = tmp_path / "run"
    step = convert_hf_to_jax(FIXTURES / "std" / "hf", run / "12")
    (run / "train_config.json").write_text("{}")
    before = sorted(str(p) for p in run.rglob("*"))
    capsys.readouterr()
    for out, relation in ((run, "contains"), (run / "12", "is"), (run / "12" / "hf", "lies inside")):
        assert jax_to_hf_main(["--src", step, "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"{relation} the source {step}" in err and err.count("\n") == 1
    with pytest.raises(ValueError, match="contains the source"):
        convert_hf_to_jax(FIXTURES / "std" / "hf", FIXTURES / "std", overwrite=True)
    # a training run directory is never replaced, even from another source
    with pytest.raises(FileExistsError, match="is a training run directory"):
        convert_hf_to_jax(FIXTURES / "std" / "hf", run, overwrite=True)
    assert sorted(str(p) for p in run.rglob("*")) == before  # nothing touched


def test_stale_staging_of_a_killed_conversion_is_removed_and_reported(tmp_path, caplog):
    import fcntl
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "out"
    code = ("import os, sys; from convert.staging import staged_output; cm = staged_output(sys.argv[1]); "
            "tmp = cm.__enter__(); open(os.path.join(tmp, 'w.bin'), 'wb').write(bytes(2_000_000)); "
            "os.kill(os.getpid(), 9)")
    p = subprocess.run([sys.executable, "-c", code, str(out)], timeout=60, cwd=root,
                       env=dict(os.environ, PYTHONPATH=root))
    assert p.returncode == -9
    stale = [f for f in os.listdir(tmp_path) if not f.endswith(".lock")]
    assert len(stale) == 1 and stale[0].startswith(".out.tmp-")
    live = tmp_path / ".out.tmp-live"  # another conversion, still running, holds its lock
    live.mkdir()
    fd = os.open(str(live) + ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        convert_hf_to_jax(FIXTURES / "std" / "hf", out)
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == [".out.tmp-live", ".out.tmp-live.lock", "out"]
    assert f"removed {tmp_path / stale[0]} (1 files, 2.0 MB: w.bin), the unfinished output of a killed" in caplog.text
    assert "belongs to a conversion still running; left in place" in caplog.text


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    """An error after half the tensors were written: no output, no temporary directory, and an
    existing output (with --overwrite) untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("old")
    calls = {"n": 0}
    real = sources.SafetensorsWeights.read

    def failing(self, name):
        calls["n"] += 1
        if calls["n"] == 50:
            raise OSError("disk on fire")
        return real(self, name)
    monkeypatch.setattr(sources.SafetensorsWeights, "read", failing)
    with pytest.raises(OSError, match="disk on fire"):
        convert_hf_to_jax(FIXTURES / "std" / "hf", out, overwrite=True)
    assert os.listdir(out) == ["config.json"] and not leftovers(tmp_path)


def test_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_hf_to_jax(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(std_config()))
    (tmp_path / "empty" / "clip").symlink_to(FIXTURES / "std" / "hf" / "clip")
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        convert_hf_to_jax(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no params/ directory"):
        convert_jax_to_hf(FIXTURES / "std" / "hf", tmp_path / "out")


def test_jax_checkpoint_with_missing_or_misshaped_params(tmp_path):
    convert_hf_to_jax(FIXTURES / "std" / "hf", tmp_path / "jax")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "jax", bad)
    config = json.loads((bad / "config.json").read_text())
    config["vocab_size"] = 300
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"llm.embed_tokens.embedding: \(320, 64\) \(config.json gives \(300, 64\)\)"):
        convert_jax_to_hf(bad, tmp_path / "out")
    config["vocab_size"] = 320
    config["prefusion_layer_num"] = 0  # no pre-fusion: the stored prefusion params are unknown to it
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unexpected \['prefusion.layers"):
        convert_jax_to_hf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_safetensors_writer_errors(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="declared twice"):
        SafetensorsWriter(path, [("a", (2,), np.float32), ("a", (2,), np.float32)])
    with pytest.raises(ValueError, match=r"1 declared tensors were never written: \['b'\]"):
        with SafetensorsWriter(path, [("a", (2,), np.float32), ("b", (1,), np.float16)]) as w:
            w.add("a", np.zeros(2, np.float32))
    assert not path.exists()
    with pytest.raises(ValueError, match=r"tensor 'a': got shape \(3,\) float32, declared \(2,\) float32"):
        with SafetensorsWriter(path, [("a", (2,), np.float32)]) as w:
            w.add("a", np.zeros(3, np.float32))
    assert not path.exists()
    with pytest.raises(ValueError, match="cannot be stored in safetensors"):
        SafetensorsWriter(path, [("a", (2,), np.complex64)])
