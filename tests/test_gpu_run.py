"""benchmarks/gpu_run.sh (the one prepared GPU run) in its CPU stand-in (`--tiny`: every step on
tiny models), and benchmarks/gpu_table.py (README's table from the run's folder) on hand-made
figures: goals against the issue's targets, figures recovered from a timed-out step's log, the
README section replaced between its markers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_run")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, GPU_RUN_BUDGET_S="900")
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_run.sh"), "--tiny"], env=env, cwd=str(out),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_stand_in_runs_every_step(stand_in):
    steps = {s["step"]: s for s in map(json.loads, (stand_in / "steps.jsonl").read_text().splitlines())}
    assert {k: steps[k]["status"] for k in ("machine", "latency", "train_step", "video")} == dict.fromkeys(
        ("machine", "latency", "train_step", "video"), "ok"), steps
    assert steps["quantized"]["status"] in ("skipped", "ok"), steps["quantized"]
    for name in ("machine.json", "latency.json", "train_step.json", "video_memory.json"):
        assert (stand_in / name).stat().st_size > 0, name
    table = (stand_in / "results_table.md").read_text()
    assert "GPU run on **cpu**" in table
    for row in ("| JAX | LLaVA-Mini |", "| PyTorch | LLaVA-v1.5 |", "Training step (tiny shape", "| mini | generate | 4 |"):
        assert row in table, row


def _write(out, name, results):
    (out / f"{name}.json").write_text(json.dumps({"results": results}))


def _lat(backend, mode, figure, batch, **kw):
    return dict(benchmark="latency", backend=backend, mode=mode, figure=figure, batch=batch, llm="llama-3.1-8b",
                dtype="bfloat16", prompt_tokens=64, **kw)


def test_table_goals_and_log_fallback(tmp_path):
    (tmp_path / "machine.json").write_text(json.dumps({"device_kind": "NVIDIA H100 80GB HBM3", "devices": 1,
                                                       "jax": "0.11.2", "torch": "2.11", "python": "3.12.1"}))
    _write(tmp_path, "latency", [
        {"figure": "bandwidth", "gb_per_s": 3000.0},
        _lat("jax", "mini", "ttft_ms", 1, ms=12.5), _lat("torch", "mini", "ttft_ms", 1, ms=25.0),
        _lat("jax", "mini", "decode_tokens_per_s", 1, tokens_per_s=150.0, bandwidth_fraction=0.75),
        _lat("jax", "mini", "images_per_s", 32, images_per_s=400.0),
        {"figure": "torch_over_jax", "of": "ttft_ms", "batch": 1, "mode": "mini", "ratio": 2.0}])
    # the video step timed out: no results file, its figures are in the log
    (tmp_path / "video.log").write_text("compiling...\n" + json.dumps(
        {"figure": "point", "llm": "llama-3.1-8b", "mode": "mini", "strategy": "streamed", "frames": 20000,
         "fits": True, "peak_gib": 20.5, "planned_peak_gib": 21.0, "seconds": 9.0}) + "\n" + json.dumps(
        {"figure": "fit", "mode": "mini", "strategy": "streamed", "budget_gib": 24.0, "points": 3,
         "frames_in_budget": 23456}) + "\nTraceback ...\n")
    (tmp_path / "steps.jsonl").write_text(json.dumps({"step": "video", "status": "timeout", "seconds": 180,
                                                      "note": "exit 124"}) + "\n")
    table = gpu_table.render(str(tmp_path))
    assert "GPU run on **NVIDIA H100 80GB HBM3**" in table and "video timeout (180 s)" in table
    assert "| JAX | LLaVA-Mini | 12.5 | 150 (75%) | 400 |" in table
    assert "| TTFT, one image | <= 15 ms | 12.5 ms | yes |" in table
    assert "| decode at batch 1 | >= 80% of the bandwidth limit | 75% | no |" in table
    assert "| TTFT vs PyTorch eager | >= 1.5x faster | 2.00x | yes |" in table
    assert "| frames in 24 GiB (streamed) | >= 15,000 | 23,456 | yes |" in table
    assert "| mini | streamed | 20,000 | yes | 20.5 | 21 | 9 |" in table
    assert "Training step: no figures." in table and "Quantized decode (bf16 / int8 / int4): not run." in table


def test_table_quantized_decode(tmp_path):
    """`benchmarks.quantization --decode`'s figures (kind `decode`), or why the step did not run."""
    (tmp_path / "steps.jsonl").write_text(json.dumps({"step": "quantized", "status": "skipped", "seconds": 0,
                                                      "note": "qwix is not importable"}) + "\n")
    assert "Quantized decode (bf16 / int8 / int4): skipped (qwix is not importable)." in gpu_table.render(
        str(tmp_path))
    _write(tmp_path, "quantization_decode", [
        {"kind": "decode", "llm": "llama-3.1-8b", "mode": m, "batch": 1, "steps": 128, "tokens_per_s": r,
         "vs_bf16": r / 100.0, "param_bytes": b} for m, r, b in (("bf16", 100.0, 16 * 2**30), ("int8", 170.0, 8 * 2**30),
                                                                  ("int4", 240.0, 5 * 2**30))])
    table = gpu_table.render(str(tmp_path))
    assert "Quantized decode (llama-3.1-8b, batch 1, 128 steps):" in table
    assert "| int8 | 170 | 1.70x | 8.00 |" in table and "| int4 | 240 | 2.40x | 5.00 |" in table


def test_readme_section_is_replaced_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{gpu_table.BEGIN}\nold table\n{gpu_table.END}\nafter\n")
    gpu_table.update_readme(str(readme), "| new |\n")
    assert readme.read_text() == f"# x\n\nbefore\n{gpu_table.BEGIN}\n| new |\n{gpu_table.END}\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="has no <!-- gpu-results:begin --> ... <!-- gpu-results:end --> section"):
        gpu_table.update_readme(str(readme), "| new |\n")
    assert readme.read_text() == "no markers\n"
