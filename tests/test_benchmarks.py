"""The efficiency benchmarks (benchmarks/flops.py, latency.py, video_memory.py) in their --tiny modes,
the PyTorch reference the latency benchmark times against (equal to the JAX model at tiny size), the
per-frame memory arithmetic and the FLOPs reduction at the real size (computed here)."""
from __future__ import annotations

import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

TOL = 1e-4


def bench(name: str):
    """A benchmark module (`benchmarks.NAME`, importable from the repository root)."""
    return importlib.import_module(f"benchmarks.{name}")


def run_tiny(name: str, capsys, tmp_path, *extra: str) -> tuple[list[dict], dict]:
    """`main(["--tiny", ...])` of one benchmark: its JSON lines and the results file it wrote."""
    out = tmp_path / f"{name}.json"
    capsys.readouterr()
    assert bench(name).main(["--tiny", "--out", str(out), *extra]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    saved = json.loads(out.read_text())
    assert saved["results"] == lines and saved["benchmark"] == name
    assert saved["machine"]["backend"] == jax.default_backend() and saved["machine"]["cpu"]
    return lines, saved


def by_figure(lines: list[dict], figure: str) -> list[dict]:
    return [f for f in lines if f["figure"] == figure]


# -- flops ---------------------------------------------------------------------------------------------------
def test_flops_tiny(capsys, tmp_path):
    lines, _ = run_tiny("flops", capsys, tmp_path)
    prefill = by_figure(lines, "prefill_tflops")
    assert {(f["variant"], f["mode"]) for f in prefill} == {(v, m) for v in ("tiny", "tiny-hd")
                                                           for m in ("baseline", "mini")}
    for f in prefill:
        # XLA's count = analytic matmuls + attention, plus a few % of elementwise work at this size
        assert 1.0 <= f["xla_over_analytic"] < 1.15, f
        assert abs(f["glue_tflops"]) < 0.01 * f["xla_tflops"], f
        parts = {"clip", "projector", "llm_prefill"} | ({"compressor", "prefusion"} if f["mode"] == "mini" else set())
        assert set(f["components_tflops"]) == parts == set(f["analytic_components_tflops"])
        assert f["vision_tokens"] == {"baseline": f["views"] * 16, "mini": 1 if f["views"] == 1 else 4}[f["mode"]]
    for f in by_figure(lines, "decode_gflops"):
        assert 1.0 <= f["xla_gflops"] / f["analytic_gflops"] < 1.1
    reductions = by_figure(lines, "prefill_reduction")
    assert len(reductions) == 2 and all(0 < f["reduction_pct"] < 100 for f in reductions)
    scan = by_figure(lines, "scan_undercount")[0]
    assert scan["scanned_tflops"] < scan["unrolled_tflops"]  # why flops.py unrolls the layers


def test_flops_analytic_counts_match_hand_arithmetic():
    """The analytic cross-check itself: one Vicuna-7B layer over 640 tokens, by hand."""
    flops = bench("flops")
    from benchmarks.common import VICUNA_7B
    d, i, t = 4096, 11008, 640
    by_hand = 2 * t * (4 * d * d + 3 * d * i) + 4 * t * t * d
    assert flops.llama_layer_flops(VICUNA_7B, t, t) == by_hand
    causal = 2 * t * (4 * d * d + 3 * d * i) + 2 * t * (t + 1) * d
    assert flops.llama_layer_flops(VICUNA_7B, t, t, causal=True) == causal


def test_real_size_flops_reduction_by_hand():
    """The real-size reduction README quotes, computed here from the configs (the analytic count,
    which test_flops_tiny and benchmarks/flops.py check against XLA's): Vicuna-7B + CLIP-L/336, one
    image and a 64-token prompt, 8.89 -> 2.30 TFLOPs (-74.1%; paper 8.55 -> 1.96, -77.1%); HD
    (2x2 tiles + global view, 64 compressed tokens) -79.6%; Llama-3.1-8B -74.3% / -79.8%."""
    from llava_mini_jax.flops import LLAMA31_8B, VICUNA_7B, real_size_config, request_flops

    def tflops(llm, mode, hd=False):
        kw = dict(resolution_ratio=2, compressor_size=8) if hd else {}
        if mode == "baseline":
            kw.pop("compressor_size", None)
        return sum(request_flops(real_size_config(llm, mode, **kw), parts=5 if hd else 1).values()) / 1e12

    base, mini = tflops(VICUNA_7B, "baseline"), tflops(VICUNA_7B, "mini")
    assert (base, mini) == (pytest.approx(8.895, abs=5e-3), pytest.approx(2.303, abs=5e-3))
    assert 1 - mini / base == pytest.approx(0.741, abs=1e-3)
    assert 1 - tflops(VICUNA_7B, "mini", True) / tflops(VICUNA_7B, "baseline", True) == pytest.approx(0.796, abs=1e-3)
    assert 1 - tflops(LLAMA31_8B, "mini") / tflops(LLAMA31_8B, "baseline") == pytest.approx(0.743, abs=1e-3)
    assert 1 - tflops(LLAMA31_8B, "mini", True) / tflops(LLAMA31_8B, "baseline", True) == pytest.approx(0.798,
                                                                                                         abs=1e-3)


# -- latency -----------------------------------------------------------------------------------------------------
def test_latency_tiny(capsys, tmp_path):
    lines, saved = run_tiny("latency", capsys, tmp_path, "--no-parity")
    assert by_figure(lines, "bandwidth")[0]["gb_per_s"] > 0
    setting = saved["setting"]
    for backend in ("torch", "jax"):
        for mode in ("baseline", "mini"):
            mine = [f for f in lines if f.get("backend") == backend and f.get("mode") == mode]
            assert [f["figure"] for f in mine] == ["ttft_ms"] + ["decode_tokens_per_s"] * 2 + ["images_per_s"]
            assert mine[0]["ms"] > 0 and mine[-1]["images_per_s"] > 0
            for f in mine[1:3]:
                assert f["tokens_per_s"] > 0 and f["bandwidth_fraction"] > 0 and f["bytes_per_step"] > 0
            assert [f["batch"] for f in mine[1:3]] == list(setting["decode_batches"])
    assert len(by_figure(lines, "baseline_over_mini")) == 8 and len(by_figure(lines, "torch_over_jax")) == 8


def test_latency_presets(capsys):
    """`--preset cpu-1b` is the training benchmarks' 1B-class shape (Llama 16 x 2048, Llama-3.2's
    vocabulary, tied embeddings) on CLIP-L/336; the real-size preset refuses a CPU; bad decode batches
    are named."""
    latency = bench("latency")
    cfg = latency.latency_config("llama-1b", "baseline", False)
    assert (cfg.llm.num_layers, cfg.llm.hidden_size, cfg.llm.vocab_size, cfg.llm.tie_word_embeddings) == (
        16, 2048, 128256, True)
    assert (cfg.vision.image_size, cfg.vision.num_layers, cfg.mode) == (336, 24, "baseline")
    assert latency.PRESETS["cpu-1b"].llm == "llama-1b" and latency.PRESETS["gpu"].decode_batches == (1, 16, 64)
    for argv, message in ((["--preset", "gpu"], "needs a GPU"), (["--tiny", "--decode-batches", "1,x"],
                                                                 "--decode-batches: expected a comma list")):
        with pytest.raises(SystemExit):
            latency.main(argv)
        assert message in capsys.readouterr().err


def test_torch_reference_equals_jax_logits():
    """The parity figure the latency run starts with: same weights (through params_to_hf), O(1)
    activations, float32, both modes; logits within 1e-4."""
    figure = bench("latency").parity()
    assert figure["ok"] and set(figure["max_abs_diff"]) == {"baseline", "mini"}
    assert max(figure["max_abs_diff"].values()) < TOL


def test_torch_reference_hd_prefill_and_decode_equal_jax():
    """HD images (stitched tiles) and the two timed paths: prefill's first-token logits and a
    decode step from the cache, JAX against PyTorch."""
    import torch
    common = bench("common")
    from benchmarks.torch_reference import TorchLlavaMini, load_jax_params, random_weights
    from llava_mini_jax.generate import init_kv_cache
    from llava_mini_jax.model import LlavaMini

    cfg = common.model_config("tiny", "mini", common.TINY_HD)
    params = random_weights(cfg, seed=1)
    ids = common.prompt_ids(cfg, 6, batch=2, seed=1)
    v = cfg.vision
    images = np.random.default_rng(1).standard_normal((2, 5, 3, v.image_size, v.image_size)).astype(np.float32)
    model = LlavaMini(cfg)
    n = ids.shape[1] - 1 + 4

    def first_and_next(p, ids, images, token):
        embeds, mask, _ = model.apply({"params": p}, ids, None, images, method="splice_inputs")
        logits, cache = model.apply({"params": p}, embeds, mask, init_kv_cache(cfg, 2, n + 2), method="prefill")
        index = jnp.full((2,), n, jnp.int32)
        return logits, model.apply({"params": p}, token, index, cache, method="decode_step")[0]

    token = np.array([5, 7], np.int32)
    ours = jax.jit(first_and_next)(params, ids, images, token)
    ref = load_jax_params(TorchLlavaMini(cfg), params).eval()
    with torch.no_grad():
        t_ids, t_images = torch.from_numpy(ids).long(), torch.from_numpy(images)
        full, _ = ref(t_ids, t_images)
        first, cache, length = ref.prefill(t_ids, t_images)
        step, _ = ref.decode_step(torch.from_numpy(token).long(), cache, length)
    assert length == n
    np.testing.assert_allclose(np.asarray(ours[0]), first.numpy(), atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.asarray(ours[0]), full[:, -1].numpy(), atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.asarray(ours[1]), step.numpy(), atol=TOL, rtol=TOL)
    assert np.abs(np.asarray(ours[1])).max() > 0.1  # O(1) logits: the comparison is not vacuous


def test_torch_reference_rejects_incomplete_weights():
    common = bench("common")
    from benchmarks.torch_reference import TorchLlavaMini, load_jax_params, random_weights
    baseline = common.model_config("tiny", "baseline", common.TINY_STANDARD)
    module = TorchLlavaMini(common.model_config("tiny", "mini", common.TINY_STANDARD))
    module.cfg = baseline  # a LLaVA-v1.5 model's params leave the compressor and pre-fusion unset
    with pytest.raises(ValueError, match="not covered"):
        load_jax_params(module, random_weights(baseline))


# -- video memory ------------------------------------------------------------------------------------------------
def test_video_memory_tiny(capsys, tmp_path):
    lines, saved = run_tiny("video_memory", capsys, tmp_path)
    points = by_figure(lines, "point")
    expected = [(m, s, f) for m, counts in saved["setting"]["frames"].items() for s in ("generate", "resident")
                for f in counts]
    assert [(p["mode"], p["strategy"], p["frames"]) for p in points] == expected
    for p in points:
        assert p["fits"] and p["seconds"] >= 0 and p.get("within_budget") in (True, None)
        assert p["llm_tokens"] == 8 + p["frames"] * (1 if p["mode"] == "mini" else 16)
        assert len(p["tokens"]) == saved["setting"]["max_new_tokens"]
        if p["mode"] == "mini":
            assert p["planned_peak_bytes"] > 0
    assert len(by_figure(lines, "fit")) == 4
    agree = by_figure(lines, "strategies_agree")  # streamed uint8 chunks + chunked prefill == the resident video
    assert len(agree) == 3 and all(f["same_tokens"] for f in agree)
    assert len(by_figure(lines, "analytic_per_frame")) == 2
    # the plan: the frames in the budget are the largest frame bucket whose planned peak fits
    plans = {f["padded_frames"]: f for f in by_figure(lines, "planned_point")}
    assert set(plans) == {4, 8} and plans[8]["cache_size"] >= plans[8]["prompt_len"] + 4
    for f in plans.values():
        assert f["peak_bytes"] > f["weight_bytes"] and set(f["program_peak_gib"]) == {"encode_chunk", "prefill",
                                                                                        "decode"}
    fits = by_figure(lines, "planned_fit")
    assert [f["memory"] for f in fits] == ["peak_bytes", "peak_bytes_without_cpu_copies"]
    for f in fits:
        assert f["peak_gib_at_it"] is None or f["peak_gib_at_it"] <= f["budget_gib"] + 5e-4
        assert f["next_bucket"] is None or f["frames_in_budget"] < f["next_bucket"]


def test_video_memory_cpu_weight_copies_real_size():
    """What XLA:CPU widens to float32 to multiply bf16 weights (subtracted from the plan): Vicuna-7B's
    LM head (4096 x 32000) and one decoder layer (4 x 4096^2 + 3 x 4096 x 11008 + 2 x 4096), 4 bytes each."""
    vm = bench("video_memory")
    from llava_mini_jax.model import LlavaMini
    cfg = bench("common").model_config("vicuna-7b", "mini")
    params = bench("common").abstract_param_tree(LlavaMini(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16))
    copies = vm.cpu_weight_copies(params, 2)
    layer = 4 * 4096 ** 2 + 3 * 4096 * 11008 + 2 * 4096
    assert copies["decode"] == copies["prefill"] == 4 * (4096 * 32000 + layer)
    assert copies["encode_chunk"] == 4 * layer  # a pre-fusion layer outweighs a CLIP layer
    assert vm.cpu_weight_copies(params, 4) == {"encode_chunk": 0, "prefill": 0, "decode": 0}
    assert vm.frame_buckets(4096) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3072, 4096]


def test_video_memory_analytic_real_size():
    """Vicuna-7B: a token's KV cache is 2 x 32 layers x 4096 x 2 bytes = 0.5 MiB; LLaVA-v1.5 holds
    576 of them per frame, LLaVA-Mini one; Llama-3.1-8B's GQA (8 KV heads) a quarter of that."""
    vm = bench("video_memory")
    vicuna = {f["mode"]: f for f in vm.analytic("vicuna-7b")}
    assert vicuna["mini"]["kv_bytes_per_token"] == 2 * 32 * 4096 * 2
    assert vicuna["mini"]["tokens_per_frame"] == 1 and vicuna["baseline"]["tokens_per_frame"] == 576
    assert vicuna["baseline"]["kv_bytes_per_frame"] == 576 * vicuna["mini"]["kv_bytes_per_frame"]
    assert vicuna["mini"]["frames_in_budget_streamed"] > 10000 > vicuna["baseline"]["frames_in_budget_streamed"]
    llama = {f["mode"]: f for f in vm.analytic("llama-3.1-8b")}
    assert llama["mini"]["kv_bytes_per_token"] == vicuna["mini"]["kv_bytes_per_token"] // 4
