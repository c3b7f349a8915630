"""Checkpoint conversion benchmark: peak memory and throughput of HF -> JAX -> HF.

    python -m benchmarks.conversion [--tiny] [--gb 3.5] [--shards 4] [--dtype float16]
        [--workdir DIR] [--keep] [--no-verify] [--json PATH]

Builds a synthetic LLaVA-Mini HF checkpoint of about `--gb` GB (Llama-shaped LLM, vocab 32000,
width 2048, as many layers as the size needs; a small CLIP) in `--shards` safetensors shards,
written tensor by tensor. Then runs `python -m convert.hf_to_jax` and `python -m
convert.jax_to_hf` as subprocesses, each measured on its own (peak RSS from `wait4`'s rusage,
wall time), checks the round trip bit for bit, and prints a summary and one JSON line (also
written to `--json`, default `benchmarks/results/convert.json` except with `--tiny`).

The bound is the issue's: 1.5 x the largest HF shard + the largest single tensor + 1 GB (the HF
shards are the input of hf_to_jax and the output of jax_to_hf; the same bound is applied to
both). GB/s = checkpoint bytes / command wall time (process start, imports and model
shape evaluation included). `--tiny` (a few MB) finishes in seconds; the test suite runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import ROOT
from convert.dtypes import DTYPES
from convert.hf_writer import nbytes, plan_shards, write_hf_weights
from convert.layout import expected_tensors
from llava_mini_jax.config import ClipVisionConfig, LlavaMiniConfig
from llava_mini_jax.safetensors_io import CheckpointReader

GB = 1e9
CLIP = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5, model_type="clip_vision_model",
            architectures=["CLIPVisionModel"])


def llava_config(width: int, inter: int, vocab: int, heads: int, layers: int, prefusion: int) -> dict:
    return {
        "architectures": ["LlavaMiniLlamaForCausalLM"], "model_type": "llava_mini_llama",
        "vocab_size": vocab, "hidden_size": width, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": heads, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": None, "max_position_embeddings": 4096, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "mm_vision_tower": "clip", "mm_hidden_size": CLIP["hidden_size"], "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "compressor_size": 1,
        "prefusion_layer_num": prefusion, "resolution_ratio": 1, "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right", "torch_dtype": "float16",
    }


def sized_config(gb: float, tiny: bool) -> dict:
    """A config whose checkpoint has about `gb` GB at 2 bytes per parameter."""
    if tiny:
        return llava_config(width=128, inter=256, vocab=2048, heads=4, layers=4, prefusion=2)
    width, inter, vocab, prefusion = 2048, 5632, 32000, 4
    per_layer = 4 * width * width + 3 * width * inter
    layers = max(1, round((gb * GB / 2 - 2 * vocab * width) / per_layer) - prefusion)
    return llava_config(width, inter, vocab, heads=16, layers=layers, prefusion=prefusion)


def build_checkpoint(directory: str, config: dict, shards: int, dtype: np.dtype) -> dict:
    """Writes the synthetic HF checkpoint (random normal * 0.02 weights); returns its sizes."""
    os.makedirs(os.path.join(directory, "clip"))
    with open(os.path.join(directory, "clip", "config.json"), "w") as f:
        json.dump(CLIP, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    cfg = LlavaMiniConfig.from_hf_dict(config, ClipVisionConfig.from_hf_dict(CLIP))
    specs = [(n, e.shape, dtype) for n, e in expected_tensors(cfg).items()]
    total = sum(nbytes(s, d) for _, s, d in specs)
    max_bytes = -(-total // shards)
    rng = np.random.default_rng(0)
    write_hf_weights(directory, specs, lambda n: (rng.standard_normal(
        next(s for m, s, _ in specs if m == n), dtype=np.float32) * np.float32(0.02)).astype(dtype), max_bytes,
        desc="building the synthetic checkpoint")
    shard_sizes = [sum(nbytes(s, d) for _, s, d in sh) for sh in plan_shards(specs, max_bytes)]
    return dict(total_bytes=total, max_shard_bytes=max_bytes, shards=len(shard_sizes),
                largest_shard_bytes=max(shard_sizes), largest_tensor_bytes=max(nbytes(s, d) for _, s, d in specs),
                tensors=len(specs))


def measured(cmd: list) -> dict:
    """Runs `cmd`; its wall time and peak RSS (this child only, from wait4)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} failed:\n{out.decode(errors='replace')[-2000:]}")
    return dict(seconds=seconds, peak_rss_bytes=usage.ru_maxrss * 1024)


def same_tensors(a: str, b: str) -> bool:
    """True when two HF directories hold the same names, dtypes, shapes and bytes."""
    ra, rb = CheckpointReader(a), CheckpointReader(b)
    try:
        if set(ra.names()) != set(rb.names()):
            return False
        for _, name in ra.iter_by_shard():
            x, y = ra.read(name), rb.read(name)
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                return False
        return True
    finally:
        ra.close()
        rb.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a few-MB checkpoint (seconds)")
    ap.add_argument("--gb", type=float, default=3.5, help="checkpoint size in GB (default 3.5)")
    ap.add_argument("--shards", type=int, default=4, help="number of input shards (default 4)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    ap.add_argument("--workdir", help="where to build (default: a temporary directory, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--no-verify", action="store_true", help="skip the bit-exact round-trip comparison")
    ap.add_argument("--json", help="results file (default benchmarks/results/convert.json; none with --tiny)")
    args = ap.parse_args(argv)
    shards = 2 if args.tiny else args.shards
    work = args.workdir or tempfile.mkdtemp(prefix="convert-bench-")
    os.makedirs(work, exist_ok=True)
    hf, jx, hf2 = (os.path.join(work, d) for d in ("hf", "jax", "hf2"))
    try:
        for d in (hf, jx, hf2):
            shutil.rmtree(d, ignore_errors=True)
        sizes = build_checkpoint(hf, sized_config(args.gb, args.tiny), shards, DTYPES[args.dtype])
        py = sys.executable
        to_jax = measured([py, "-m", "convert.hf_to_jax", "--src", hf, "--out", jx])
        to_hf = measured([py, "-m", "convert.jax_to_hf", "--src", jx, "--out", hf2, "--max-shard-size",
                          str(sizes["max_shard_bytes"])])
        exact = None if args.no_verify else same_tensors(hf, hf2)
    finally:
        if not args.keep:
            shutil.rmtree(work if not args.workdir else hf, ignore_errors=True)
            for d in (jx, hf2):
                shutil.rmtree(d, ignore_errors=True)
    bound = 1.5 * sizes["largest_shard_bytes"] + sizes["largest_tensor_bytes"] + GB
    result = {"benchmark": "convert", "tiny": args.tiny, "dtype": args.dtype,
              "checkpoint_gb": sizes["total_bytes"] / GB,
              "tensors": sizes["tensors"], "shards": sizes["shards"],
              "largest_shard_gb": sizes["largest_shard_bytes"] / GB,
              "largest_tensor_gb": sizes["largest_tensor_bytes"] / GB, "rss_bound_gb": bound / GB,
              "round_trip_bit_exact": exact, "cpus": os.cpu_count(), "python": platform.python_version()}
    for name, m in (("hf_to_jax", to_jax), ("jax_to_hf", to_hf)):
        result[name] = {"seconds": round(m["seconds"], 2),
                        "gb_per_s": round(sizes["total_bytes"] / GB / m["seconds"], 3),
                        "peak_rss_gb": round(m["peak_rss_bytes"] / GB, 3), "within_bound": m["peak_rss_bytes"] < bound}
    print(f"checkpoint {result['checkpoint_gb']:.2f} GB {args.dtype}, {sizes['tensors']} tensors in {sizes['shards']} "
          f"shards (largest {result['largest_shard_gb']:.2f} GB), largest tensor {result['largest_tensor_gb']:.3f} GB")
    print(f"peak-RSS bound 1.5 x shard + tensor + 1 GB = {result['rss_bound_gb']:.2f} GB")
    for name in ("hf_to_jax", "jax_to_hf"):
        r = result[name]
        print(f"{name}: {r['seconds']:.1f} s, {r['gb_per_s']:.2f} GB/s, peak RSS {r['peak_rss_gb']:.2f} GB "
              f"({'within' if r['within_bound'] else 'OVER'} bound)")
    print(f"round trip bit-exact: {exact}")
    line = json.dumps(result)
    print(line)
    path = args.json or (None if args.tiny else os.path.join(ROOT, "benchmarks", "results", "convert.json"))
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(line + "\n")
    ok = result["hf_to_jax"]["within_bound"] and result["jax_to_hf"]["within_bound"] and exact is not False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
