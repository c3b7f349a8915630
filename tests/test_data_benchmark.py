"""The data benchmark (benchmarks/data.py) runs in its --tiny mode and reports every figure."""

import importlib.util
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_benchmark():
    spec = importlib.util.spec_from_file_location("data_benchmark", ROOT / "benchmarks" / "data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_benchmark(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "data.json"
    assert bench.main(["--tiny", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [f["workers"] for f in lines] == [0, 1, 2]
    for figure in lines:
        assert figure["benchmark"] == "data" and figure["samples"] > 0
        assert figure["samples_per_s"] > 0
    saved = json.loads(out.read_text())
    assert saved["results"] == lines and saved["setting"]["num_images"] == 48
