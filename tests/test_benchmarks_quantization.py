"""benchmarks/quantization.py and benchmarks/lora_memory.py in their --tiny modes report every figure
(the tiny model's sizes, the std fixture in int8 / int4, the decode timing code path; the LoRA
plans over bf16 / int8 / int4 bases), with the bounds the fixture figures must keep."""
from __future__ import annotations

import json

import jax
import pytest

from benchmarks import lora_memory, quantization


def _lines(capsys):
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]


def test_quantization_tiny(tmp_path, capsys):
    out = tmp_path / "q.json"
    assert quantization.main(["--tiny", "--out", str(out)]) == 0
    lines = _lines(capsys)
    assert json.loads(out.read_text())["results"] == lines
    memory = {(f["mode"], f["vision"]): f["bytes"] for f in lines if f["kind"] == "memory"}
    assert memory[("bf16", "bf16")] > memory[("int8", "bf16")] > memory[("int8", "int8")] > memory[("int4", "int4")]
    fixture = {f["mode"]: f for f in lines if f["kind"] == "fixture"}
    assert fixture["int8"]["logits_rel_error"] < 0.04 and fixture["int8"]["top1_agreement"] >= 0.95
    assert fixture["int4"]["logits_rel_error"] < 0.35 and fixture["int4"]["top1_agreement"] >= 0.6
    assert all(0 <= f["greedy_token_agreement"] <= 1 for f in fixture.values())


def test_quantization_decode_tiny(tmp_path, capsys):
    assert quantization.main(["--tiny", "--decode", "--out", str(tmp_path / "d.json")]) == 0
    decode = {f["mode"]: f for f in _lines(capsys) if f["kind"] == "decode"}
    assert set(decode) == {"bf16", "int8", "int4"} and all(f["tokens_per_s"] > 0 for f in decode.values())
    assert decode["int4"]["param_bytes"] < decode["int8"]["param_bytes"] < decode["bf16"]["param_bytes"]
    if jax.default_backend() == "cpu":  # the 8B figure is refused in one line without a GPU
        with pytest.raises(SystemExit) as e:
            quantization.main(["--decode"])
        assert e.value.code == 2 and "needs a GPU" in capsys.readouterr().err


def test_lora_memory_tiny(tmp_path, capsys):
    assert lora_memory.main(["--tiny", "--out", str(tmp_path / "l.json")]) == 0
    plans = {f["base"]: f for f in _lines(capsys) if f["kind"] == "plan"}
    assert plans["bf16"]["params_gib"] >= plans["int8"]["params_gib"] >= plans["int4"]["params_gib"]
    assert plans["int4"]["total_bytes"] < plans["int8"]["total_bytes"] < plans["bf16"]["total_bytes"]
    assert len({f["adapter_params"] for f in plans.values()}) == 1 and plans["bf16"]["adapter_params"] > 0
