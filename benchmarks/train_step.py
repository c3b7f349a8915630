"""Train-step speed: step time, tokens/s and model FLOPs utilisation of `train`'s jitted step.

    python -m benchmarks.train_step --shape 8b --llm-layers 8 --batch 8 --seq-len 2048   # GPU
    python -m benchmarks.train_step --shape 1b --batch 16 --seq-len 2048
    python -m benchmarks.train_step --shape small --compute-dtype float32                  # CPU
    python -m benchmarks.train_step --tiny                                                  # seconds (tests)

The step is exactly the training one (`train.trainer.build_trainer`: stage-2 parameter groups by
default, `--stage 1` for the projector-only LLaVA-v1.5 stage; AdamW, clipping, remat, scan, the
mesh of `--mesh data,fsdp,tensor`), run on a fixed random batch of `--batch` rows of `--seq-len`
text tokens (one image each; LLaVA-Mini puts one vision token in the LLM sequence, LLaVA-v1.5
all patches), half of each row supervised.

- `step_time_ms`: median wall time of `--steps` steps after `--warmup`, each waited for.
- `tokens_per_s`: LLM sequence tokens (vision tokens included, padding excluded) per second.
- `model_flops_per_step`: XLA's cost analysis of the same step lowered with `scan_layers=False`
  and no remat (a scanned body is counted once, and recomputation is not model work): forward,
  backward of the trainable params, optimiser.
- `mfu`: model FLOPs per second / (peak of the device kind x devices), with the bf16 dense peaks
  of `PEAK_TFLOPS` (or `--peak-tflops`); none on CPU unless given.

Prints one JSON line per figure; writes `benchmarks/results/train_step.json` (`--out`; `--tiny`
writes nothing unless `--out` is given).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from flax import traverse_util

from llava_mini_jax.config import (IGNORE_INDEX, IMAGE_TOKEN_INDEX, ClipVisionConfig, LlamaConfig,
                                   LlavaMiniConfig)

from benchmarks.common import LLAMA31_8B, emit, write_results

# bf16 dense peak TFLOP/s per device, by a substring of `device_kind` (lower case).
PEAK_TFLOPS = {"h200": 989.0, "h100": 989.0, "a100": 312.0, "l40s": 362.0, "tpu v6": 918.0, "tpu v5p": 459.0,
               "tpu v5 lite": 197.0, "tpu v5e": 197.0, "tpu v4": 275.0}

LLAMA32_1B = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                         num_kv_heads=8, rms_norm_eps=1e-5, rope_theta=5e5, max_position_embeddings=131072,
                         tie_word_embeddings=True, pad_token_id=128004)
SMALL_LLM = LlamaConfig(vocab_size=8000, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=8,
                        num_kv_heads=4, max_position_embeddings=4096)
SMALL_CLIP = ClipVisionConfig(hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=8, patch_size=14,
                              image_size=112)


def shape_config(shape: str, mode: str, llm_layers: int | None) -> LlavaMiniConfig:
    """`tiny` (tests), `small` (CPU), `1b` (Llama-3.2-1B shape + CLIP-L/336), `8b` (Llama-3.1-8B + CLIP-L/336)."""
    if shape == "tiny":
        from train.tiny import tiny_model_config
        mc = tiny_model_config(mode)
    else:
        llm, vision = {"small": (SMALL_LLM, SMALL_CLIP), "1b": (LLAMA32_1B, ClipVisionConfig()),
                       "8b": (LLAMA31_8B, ClipVisionConfig())}[shape]
        mc = LlavaMiniConfig(llm=llm, vision=vision, mode=mode, projector_type="mlp2x_gelu", vision_select_layer=-2,
                             compressor_size=1, prefusion_layers=4, vision_tower="bench-clip")
    if llm_layers is not None:
        import dataclasses
        mc = dataclasses.replace(mc, llm=dataclasses.replace(mc.llm, num_layers=llm_layers))
    return mc


def random_batch(mc: LlavaMiniConfig, rows: int, seq_len: int, seed: int = 0) -> dict:
    """Rows of `seq_len` text tokens: BOS, the image placeholder, random ids; the second half supervised."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, mc.llm.vocab_size, size=(rows, seq_len)).astype(np.int32)
    ids[:, 0], ids[:, 1] = 1, IMAGE_TOKEN_INDEX
    labels = ids.copy()
    labels[:, :seq_len // 2] = IGNORE_INDEX
    v = mc.vision
    images = rng.normal(size=(rows, 1, v.num_channels, v.image_size, v.image_size)).astype(np.float32)
    return dict(input_ids=ids, attention_mask=np.ones_like(ids), labels=labels, images=images)


def _train_config(args, config_json: str, scan: bool, remat: str):
    from train.config import load_config
    preset = "stage1" if args.stage == 1 else "stage2"
    d, f, t = args.mesh
    over = [f"model.config_json={config_json}", "model.llm_path=null", "model.vision_path=null", "model.path=null",
            "model.init_from_checkpoint=null", f"model.mode={'baseline' if args.stage == 1 else 'mini'}",
            f"model.compute_dtype={args.compute_dtype}", f"model.param_dtype={args.param_dtype}",
            f"model.scan_layers={scan}", f"model.remat_policy={remat}", "model.overrides={}", "data.source=synthetic",
            f"mesh.data={d}", f"mesh.fsdp={f}", f"mesh.tensor={t}",
            f"mesh.devices={d * f * t if min(d, f, t) > 0 else 'null'}", f"train.global_batch_size={args.batch}",
            f"train.grad_accum_steps={args.accum}", f"train.max_steps={args.warmup + args.steps + 1}",
            "distributed.initialize=never"]
    return load_config(preset, over)


def peak_tflops(kind: str, given: float | None) -> float | None:
    if given is not None:
        return given
    kind = kind.lower()
    return next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)


def run(args) -> list:
    from train.model_setup import model_config
    from train.trainer import build_trainer
    results: list = []
    mode = "baseline" if args.stage == 1 else "mini"
    mc = shape_config(args.shape, mode, args.llm_layers)
    tmp = tempfile.mkdtemp(prefix="bench_train_")
    path = os.path.join(tmp, "config.json")
    with open(path, "w") as f:
        json.dump(mc.to_hf_dict(), f)
    cfg = _train_config(args, path, scan=True, remat=args.remat)
    mc, _ = model_config(cfg.model)
    trainer = build_trainer(cfg, mc, cfg.train.max_steps)
    n_dev = trainer.mesh.size
    setting = dict(shape=args.shape, stage=args.stage, mode=mode, llm_layers=mc.llm.num_layers, batch=args.batch,
                   accum=args.accum, seq_len=args.seq_len, mesh=dict(trainer.mesh.shape), remat=args.remat,
                   compute_dtype=args.compute_dtype, param_dtype=args.param_dtype)
    base = dict(benchmark="train_step", **setting)

    t0 = time.perf_counter()
    state = trainer.init_state(trainer.random_params(0))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    batch = trainer.put_batch(random_batch(mc, args.batch, args.seq_len))
    t0 = time.perf_counter()
    compiled = trainer.step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    times, tokens = [], None
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        m = jax.device_get(m)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        tokens = float(m["tokens"])
    step_s = statistics.median(times)

    # model FLOPs: the same step unscanned and without remat, lowered only (nothing allocated)
    flops_cfg = _train_config(args, path, scan=False, remat="none")
    fmc, _ = model_config(flops_cfg.model)
    flops_trainer = build_trainer(flops_cfg, fmc, flops_cfg.train.max_steps, mesh=trainer.mesh)
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in batch.items()}
    cost = flops_trainer.step_fn.lower(flops_trainer.abstract_state, abstract_batch).cost_analysis()
    flops = float(cost.get("flops", 0.0)) if isinstance(cost, dict) else None
    kind = jax.devices()[0].device_kind
    peak = peak_tflops(kind, args.peak_tflops)
    achieved = flops / step_s / 1e12 if flops else None
    mfu = achieved / (peak * n_dev) if achieved is not None and peak else None
    stats = jax.devices()[0].memory_stats() or {}
    figures = {
        "init_s": init_s, "compile_s": compile_s, "step_time_ms": 1e3 * step_s, "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s, "model_flops_per_step": flops, "model_tflops_per_s": achieved,
        "peak_tflops_per_device": peak, "mfu": mfu,
        "peak_device_bytes": stats.get("peak_bytes_in_use"),
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(trainer.abstract_state.params))),
        "trainable_params": int(sum(np.prod(x.shape) for p, x in traverse_util.flatten_dict(
            trainer.abstract_state.params).items() if p in trainer.plan.trainable)),
    }
    for name, value in figures.items():
        emit(dict(base, figure=name, value=value, device_kind=kind, devices=n_dev), results)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="1b", choices=["tiny", "small", "1b", "8b"])
    p.add_argument("--llm-layers", type=int, default=None, help="cut the LLM to this many layers (what fits)")
    p.add_argument("--stage", type=int, default=2, choices=[1, 2])
    p.add_argument("--batch", type=int, default=8, help="global rows per step")
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=2048, help="text tokens per row")
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor")
    p.add_argument("--remat", default="full", choices=["none", "full", "dots"])
    p.add_argument("--compute-dtype", default="bfloat16")
    p.add_argument("--param-dtype", default="float32")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None, help="per-device peak (default: by device kind)")
    p.add_argument("--tiny", action="store_true", help="tiny model, 3 steps, float32 (seconds; the tests)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.shape, args.batch, args.seq_len, args.steps, args.warmup = "tiny", 8, 12, 3, 1
        args.compute_dtype, args.mesh, args.remat = "float32", "1,1,1", "none"
    args.mesh = tuple(int(x) for x in args.mesh.split(","))
    if len(args.mesh) != 3:
        p.error("--mesh needs three sizes: data,fsdp,tensor")
    out = args.out if (args.out or args.tiny) else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                                 "train_step.json")
    results = run(args)
    setting = {k: v for k, v in vars(args).items() if k != "out"}
    write_results(out, "train_step", setting, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
