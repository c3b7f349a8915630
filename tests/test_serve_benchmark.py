"""benchmarks/serving.py in its --tiny mode (every figure, the engine's token count), and its
capacity arithmetic at the real size by hand."""
from __future__ import annotations

import json

import jax

from test_benchmarks import bench, by_figure


def serve_benchmark():
    return bench("serving")


def test_serve_tiny(capsys, tmp_path):
    out = tmp_path / "serve.json"
    capsys.readouterr()
    assert serve_benchmark().main(["--tiny", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    saved = json.loads(out.read_text())
    assert saved["results"] == lines and saved["benchmark"] == "serve"
    assert saved["machine"]["backend"] == jax.default_backend()
    levels = saved["setting"]["concurrency"]
    for system in ("engine", "generate"):
        figures = by_figure(lines, system)
        assert [f["concurrency"] for f in figures] == levels
        for f in figures:
            assert f["requests"] >= f["concurrency"] and f["requests_per_s"] > 0 and f["generated_tokens_per_s"] > 0
            assert 0 < f["ttft_p50_ms"] <= f["ttft_p99_ms"]
    for e, g in zip(by_figure(lines, "engine"), by_figure(lines, "generate")):
        assert e["generated_tokens"] == g["generated_tokens"]  # the same requests, every answer token made
    assert len(by_figure(lines, "speedup")) == len(levels)
    assert {f["mode"] for f in by_figure(lines, "capacity")} == {"mini", "baseline"}


def test_capacity_arithmetic_at_the_real_size():
    """Llama-3.1-8B: a token's KV is 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB; an image is
    1 token in LLaVA-Mini (0.125 MiB), 576 in LLaVA-v1.5 (72 MiB); a chat adds 320 text tokens."""
    serve = serve_benchmark()
    cap = {f["mode"]: f for f in serve.capacity_analytic(serve.FULL)}
    mini, base = cap["mini"], cap["baseline"]
    assert mini["kv_bytes_per_token"] == base["kv_bytes_per_token"] == 2 * 32 * 8 * 128 * 2
    assert (mini["kv_mib_per_image"], base["kv_mib_per_image"]) == (0.125, 72.0)
    assert (mini["chat_tokens"], base["chat_tokens"]) == (321, 896)
    assert (mini["engine_context"], base["engine_context"]) == (512, 1024)
    free = 80 * 2 ** 30 - mini["weights_gib"] * 2 ** 30 - 2 * 2 ** 30
    assert abs(mini["chats_that_fit_engine"] - free / (512 * 128 * 1024)) < 2
    assert mini["chats_that_fit_engine"] > base["chats_that_fit_engine"]
