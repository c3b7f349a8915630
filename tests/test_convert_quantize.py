"""convert/quantize.py: a quantized checkpoint holds exactly the params `load_pretrained(quantize=...)`
makes (int4 packed two per byte on disk), loads them without the float model, and is never
partial."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import FIXTURES
from convert.quantize import main, quantize_checkpoint
from llava_mini_jax import load_pretrained
from llava_mini_jax import quantize as Q
from llava_mini_jax.jax_checkpoint import ParamsReader

SRC = FIXTURES / "std" / "hf"


def _flat(params):
    return {k: np.asarray(v.astype(jnp.float32)) for k, v in traverse_util.flatten_dict(params).items()}


@pytest.mark.parametrize("config", [Q.QuantizeConfig("int8"), Q.QuantizeConfig("int4", group_size=16, vision=True)])
def test_round_trip_equals_quantize_on_load(tmp_path, config, monkeypatch):
    out = quantize_checkpoint(str(SRC), str(tmp_path / "q"), config)
    assert json.loads((tmp_path / "q" / "quantization.json").read_text()) == config.to_dict()
    assert (tmp_path / "q" / "preprocessor_config.json").exists()
    reader = ParamsReader(str(tmp_path / "q" / "params"))
    stored = dict((p, reader.shape_dtype(p)) for p in reader.paths)
    kernel = ("llm", "decoder", "layers", "mlp", "gate_proj", "kernel")
    if config.mode == "int4":
        assert stored[kernel + ("qvalue_packed",)] == ((2, 64, 64), np.dtype(np.uint8))  # [layers, D, I/2]
    else:
        assert stored[kernel + ("qvalue",)] == ((2, 64, 128), np.dtype(np.int8))
    _, want = load_pretrained(SRC, quantize=config)
    # restored as stored: the float path (read + quantize) never runs
    monkeypatch.setattr(Q, "quantize_params", lambda *a, **k: pytest.fail("quantized again"))
    model, got = load_pretrained(out)
    assert Q.model_quantize_config(model) == config
    a, b = _flat(want), _flat(got)
    assert a.keys() == b.keys()
    for k in a:
        assert traverse_util.flatten_dict(got)[k].dtype == traverse_util.flatten_dict(want)[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg="/".join(k))


def test_asking_another_mode_of_a_quantized_checkpoint_fails(tmp_path):
    out = quantize_checkpoint(str(SRC), str(tmp_path / "q"), Q.QuantizeConfig("int4", group_size=16))
    with pytest.raises(ValueError, match="holds int4 weights"):
        load_pretrained(out, quantize="int8")
    load_pretrained(out, quantize="int4")  # the same mode is fine


def test_cli_never_leaves_partial_output(tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["--src", str(SRC), "--out", str(out), "--mode", "int4", "--group-size", "0"]) == 2
    assert "group_size=0" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())
    assert main(["--src", str(SRC), "--out", str(out), "--mode", "int8"]) == 0
    assert main(["--src", str(SRC), "--out", str(out), "--mode", "int8"]) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--src", str(out), "--out", str(out / "again"), "--mode", "int8"]) == 2  # inside its source
    assert "lies inside the source" in capsys.readouterr().err and not (out / "again").exists()
