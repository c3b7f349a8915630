"""Latency and throughput of LLaVA-Mini against LLaVA-v1.5 mode, in JAX and in PyTorch, in one run.

Random bf16 weights at the real sizes (CLIP ViT-L/336 + Vicuna-7B by default), created on the
device; one request = one image + a `prompt_tokens`-token prompt, inputs already on the device.
Figures, each for both modes and both backends:
- `ttft_ms`: time to first token of one request (splice, CLIP, compressor, pre-fusion, LLM
  prefill, argmax), median of `repeats` after warmup;
- `decode_tokens_per_s` at batch 1 and 16: `decode_steps` greedy steps from a prefilled cache,
  with the rate as a fraction of the memory-bandwidth limit `batch / (bytes read per step /
  measured bandwidth)` (bytes = LLM weights + the KV cache the step attends);
- `images_per_s`: requests (image + prompt -> first token) per second at batch `image_batch`.
Then ratios: LLaVA-v1.5 / LLaVA-Mini time per backend, PyTorch / JAX time per figure.

Presets: the GPU run (`--llm vicuna-7b|llama-3.1-8b`, bf16, decode at batch 1, 16 and 64;
`benchmarks/gpu_run.sh` runs it), `--preset cpu-1b` (the 1B-class shape: Llama 16 x 2048 with the
Llama-3.2-1B vocabulary and tied embeddings, CLIP-L/336; float32, the figure this CPU can give)
and `--tiny` (the test suite).

The PyTorch side (`torch_reference.py`: HF CLIP and Llama with SDPA, DynamicCache, eager) runs
first and frees its memory; JAX runs with `XLA_PYTHON_CLIENT_PREALLOCATE=false` so both fit on one
GPU. Before timing, a `parity` figure checks that the two compute the same logits (tiny model, same
weights through `params_to_hf`, float32, 1e-4).

    python -m benchmarks.latency                 # GPU; benchmarks/results/latency.json
    python -m benchmarks.latency --preset cpu-1b # CPU, ~17 min on 2 shared cores; results/latency_cpu_1b.json
    python -m benchmarks.latency --tiny          # CPU, seconds (the test suite)
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the torch side shares the device
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (PAPER_LATENCY_MS, RESULTS, STANDARD, TINY_STANDARD, abstract_param_tree, default_out,
                               emit, model_config, param_bytes, prompt_ids, random_params_on_device, significant,
                               time_call, vision_tokens, write_results)
from benchmarks.train_step import LLAMA32_1B
from llava_mini_jax.flops import real_size_config
from llava_mini_jax.generate import init_kv_cache
from llava_mini_jax.model import LlavaMini

MODES = ("baseline", "mini")
PARITY_TOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Setting:
    llm: str
    prompt_tokens: int
    decode_batches: tuple[int, ...]
    decode_steps: int
    image_batch: int
    warmup: int
    repeats: int
    dtype: str
    bandwidth_mib: int
    backends: tuple[str, ...] = ("torch", "jax")
    tiny: bool = False


FULL = Setting(llm="vicuna-7b", prompt_tokens=64, decode_batches=(1, 16, 64), decode_steps=64, image_batch=32,
               warmup=2, repeats=10, dtype="bfloat16", bandwidth_mib=2048)
# The 1B-class shape on a CPU: float32 (XLA:CPU and torch both run it natively); batch 1 decode, one
# warm-up and two timed repeats, to fit a shared 2-core machine.
CPU_1B = Setting(llm="llama-1b", prompt_tokens=64, decode_batches=(1,), decode_steps=8, image_batch=2, warmup=1,
                 repeats=2, dtype="float32", bandwidth_mib=512)
TINY = Setting(llm="tiny", prompt_tokens=8, decode_batches=(1, 2), decode_steps=4, image_batch=2, warmup=1,
               repeats=2, dtype="float32", bandwidth_mib=32, tiny=True)
PRESETS = {"gpu": FULL, "cpu-1b": CPU_1B}
PRESET_NOTES = {"cpu-1b": "2-core CPU shared with other engineers' work: one warm-up and two timed repeats, decode "
                          "at batch 1 only (8 steps), to fit the machine; medians of two runs, so noisy (min_ms "
                          "beside ms). bandwidth_fraction is against a 512 MiB copy timed on the same loaded "
                          "machine and can exceed 1."}


def latency_config(llm: str, mode: str, tiny: bool):
    """The model of one run: `llama-1b` (Llama 16 x 2048, vocabulary 128,256, tied embeddings,
    the training benchmarks' 1B-class shape) + CLIP-L/336, or `common.model_config`'s."""
    if llm == "llama-1b":
        return real_size_config(LLAMA32_1B, mode)
    return model_config(llm, mode, TINY_STANDARD if tiny else STANDARD)


def request(cfg, setting: Setting, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`(input_ids [B, prompt + 1], images [B, 1, 3, H, W] float32)` of identical-length prompts."""
    v = cfg.vision
    ids = prompt_ids(cfg, setting.prompt_tokens, batch, seed)
    images = np.random.default_rng(seed).standard_normal((batch, 1, v.num_channels, v.image_size, v.image_size))
    return ids, images.astype(np.float32)


def spliced_length(cfg, setting: Setting) -> int:
    return setting.prompt_tokens + vision_tokens(cfg, 1)


def cache_slots(cfg, setting: Setting) -> int:
    """One cache size for every prefill (first token plus the decode steps): one compile per batch."""
    return spliced_length(cfg, setting) + setting.decode_steps + 1


# -- bandwidth model ------------------------------------------------------------------------------------
def measure_bandwidth(mib: int, dtype) -> dict:
    """Device memory bandwidth from an elementwise op over `mib` MiB (read once, written once)."""
    n = mib * 2 ** 20 // jnp.dtype(dtype).itemsize
    x = jnp.ones((n,), dtype)
    f = jax.jit(lambda a: a * 2 + 1)
    t = time_call(lambda: f(x), warmup=2, repeats=10)
    moved = 2 * n * jnp.dtype(dtype).itemsize
    return {"benchmark": "latency", "figure": "bandwidth", "bytes_moved": moved,
            "gb_per_s": significant(moved / t["min_s"] / 1e9, 4),
            "median_gb_per_s": significant(moved / t["median_s"] / 1e9, 4)}


def decode_bytes(cfg, params_tree, batch: int, keys: int, itemsize: int) -> int:
    """Bytes one decode step must read: the LLM's weights (all but the embedding table, of which
    `batch` rows) and `keys` cached key/value slots per row and layer."""
    llm = params_tree["llm"]
    c = cfg.llm
    weights = param_bytes(llm) - param_bytes(llm["embed_tokens"]) + batch * c.hidden_size * itemsize
    cache = 2 * c.num_layers * batch * keys * c.num_kv_heads * c.head_dim * itemsize
    return int(weights + cache)


# -- JAX ------------------------------------------------------------------------------------------------------
class JaxRunner:
    """The JAX model of one mode with jitted prefill (to the first token) and decode step."""

    def __init__(self, cfg, setting: Setting, params=None):
        self.cfg, self.setting = cfg, setting
        self.dtype = jnp.dtype(setting.dtype)
        self.model = LlavaMini(cfg, dtype=self.dtype, param_dtype=self.dtype)
        self.params = random_params_on_device(self.model) if params is None else params
        slots = cache_slots(cfg, setting)
        model, dtype = self.model, self.dtype

        def prefill(p, ids, images):
            embeds, mask, _ = model.apply({"params": p}, ids, None, images, method="splice_inputs")
            cache = init_kv_cache(cfg, ids.shape[0], slots, dtype)
            logits, cache = model.apply({"params": p}, embeds, mask, cache, method="prefill")
            return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

        def step(p, token, index, cache):
            logits, cache = model.apply({"params": p}, token, index, cache, method="decode_step")
            return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

        self.prefill = jax.jit(prefill)
        self.step = jax.jit(step, donate_argnums=(3,))

    def inputs(self, batch: int):
        ids, images = request(self.cfg, self.setting, batch)
        return jnp.asarray(ids), jnp.asarray(images, self.dtype)

    def time_prefill(self, batch: int) -> dict:
        ids, images = self.inputs(batch)
        return time_call(lambda: self.prefill(self.params, ids, images)[0], self.setting.warmup, self.setting.repeats)

    def time_decode(self, batch: int) -> dict:
        """Seconds of `decode_steps` steps from a fresh prefill, per repeat (the cache is donated)."""
        ids, images = self.inputs(batch)
        first = spliced_length(self.cfg, self.setting)
        indices = [jnp.full((batch,), first + t, jnp.int32) for t in range(self.setting.decode_steps)]
        times = []
        for r in range(self.setting.warmup + self.setting.repeats):
            token, cache = jax.block_until_ready(self.prefill(self.params, ids, images))
            begin = time.perf_counter()
            for index in indices:
                token, cache = self.step(self.params, token, index, cache)
            token.block_until_ready()
            if r >= self.setting.warmup:
                times.append(time.perf_counter() - begin)
            del cache
        return {"median_s": float(np.median(times)), "min_s": min(times), "repeats": len(times)}

    def close(self):
        del self.params
        jax.clear_caches()
        gc.collect()


# -- PyTorch ----------------------------------------------------------------------------------------------------
class TorchRunner:
    """The PyTorch reference of one mode on the benchmark's device, weights random (or the given
    JAX params), eager with SDPA and HF's DynamicCache."""

    def __init__(self, cfg, setting: Setting, params=None):
        import torch
        from benchmarks.torch_reference import TorchLlavaMini, load_jax_params
        self.torch, self.cfg, self.setting = torch, cfg, setting
        self.device = torch.device("cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu")
        self.dtype = getattr(torch, setting.dtype)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)  # build the weights in their final dtype, on the device
        try:
            with self.device:
                module = TorchLlavaMini(cfg)
        finally:
            torch.set_default_dtype(previous)
        if params is not None:
            load_jax_params(module, params)
        self.module = module.to(device=self.device, dtype=self.dtype).eval()

    def sync(self, x=None):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
        return x

    def inputs(self, batch: int):
        ids, images = request(self.cfg, self.setting, batch)
        torch = self.torch
        return (torch.from_numpy(ids).long().to(self.device),
                torch.from_numpy(images).to(device=self.device, dtype=self.dtype))

    def first_token(self, ids, images):
        with self.torch.inference_mode():
            logits, cache, length = self.module.prefill(ids, images)
            return logits.argmax(-1), cache, length

    def time_prefill(self, batch: int) -> dict:
        ids, images = self.inputs(batch)
        return time_call(lambda: self.first_token(ids, images)[0], self.setting.warmup, self.setting.repeats,
                         sync=self.sync)

    def time_decode(self, batch: int) -> dict:
        ids, images = self.inputs(batch)
        times = []
        for r in range(self.setting.warmup + self.setting.repeats):
            token, cache, length = self.first_token(ids, images)
            self.sync()
            begin = time.perf_counter()
            with self.torch.inference_mode():
                for t in range(self.setting.decode_steps):
                    logits, cache = self.module.decode_step(token, cache, length + t)
                    token = logits.argmax(-1)
            self.sync()
            if r >= self.setting.warmup:
                times.append(time.perf_counter() - begin)
        return {"median_s": float(np.median(times)), "min_s": min(times), "repeats": len(times)}

    def close(self):
        del self.module
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


RUNNERS = {"jax": JaxRunner, "torch": TorchRunner}


# -- parity ------------------------------------------------------------------------------------------------------
def parity(modes=MODES) -> dict:
    """Max |JAX - PyTorch| of the logits (valid positions) of the tiny model in float32 with the same
    weights, on this machine's device, per mode: the check that the timed programs compute the same."""
    import torch
    from benchmarks.torch_reference import TorchLlavaMini, load_jax_params, random_weights
    setting = dataclasses.replace(TINY, dtype="float32")
    diffs = {}
    for mode in modes:
        cfg = model_config("tiny", mode, TINY_STANDARD)
        params = random_weights(cfg, seed=0)
        ids, images = request(cfg, setting, batch=2)
        model = LlavaMini(cfg)
        with jax.default_matmul_precision("float32"):
            ours = jax.jit(lambda p, i, im: model.apply({"params": p}, i, None, im).logits)(params, ids, images)
        reference = load_jax_params(TorchLlavaMini(cfg), params).eval()
        with torch.no_grad():
            theirs, mask = reference(torch.from_numpy(ids).long(), torch.from_numpy(images))
        valid = mask.numpy().astype(bool)
        diffs[mode] = float(np.abs(np.asarray(ours)[valid] - theirs.numpy()[valid]).max())
    return {"benchmark": "latency", "figure": "parity", "max_abs_diff": diffs, "tolerance": PARITY_TOL,
            "ok": all(d <= PARITY_TOL for d in diffs.values())}


# -- figures ------------------------------------------------------------------------------------------------------
def measure(backend: str, mode: str, setting: Setting, bandwidth_gbs: float) -> list[dict]:
    """The ttft / decode / images-per-second figures of one backend and mode."""
    cfg = latency_config(setting.llm, mode, setting.tiny)
    runner = RUNNERS[backend](cfg, setting)
    itemsize = jnp.dtype(setting.dtype).itemsize
    tree = abstract_param_tree(LlavaMini(cfg, dtype=jnp.dtype(setting.dtype), param_dtype=jnp.dtype(setting.dtype)))
    base = {"benchmark": "latency", "backend": backend, "mode": mode, "llm": setting.llm, "dtype": setting.dtype,
            "prompt_tokens": setting.prompt_tokens, "vision_tokens": vision_tokens(cfg, 1),
            "llm_tokens": spliced_length(cfg, setting)}
    figures = []
    try:
        t = runner.time_prefill(1)
        paper = {} if setting.llm != "vicuna-7b" else {
            f"paper_ms_{gpu}": PAPER_LATENCY_MS[gpu][mode] for gpu in PAPER_LATENCY_MS}
        figures.append(dict(base, figure="ttft_ms", batch=1, ms=significant(1e3 * t["median_s"]),
                            min_ms=significant(1e3 * t["min_s"]), repeats=t["repeats"], **paper))
        for batch in setting.decode_batches:
            t = runner.time_decode(batch)
            rate = batch * setting.decode_steps / t["median_s"]
            # JAX attends every preallocated slot; HF's DynamicCache only the filled ones (mean over the steps)
            keys = (cache_slots(cfg, setting) if backend == "jax"
                    else spliced_length(cfg, setting) + (setting.decode_steps + 1) / 2)
            moved = decode_bytes(cfg, tree, batch, int(keys), itemsize)
            limit = batch / (moved / (bandwidth_gbs * 1e9))
            figures.append(dict(base, figure="decode_tokens_per_s", batch=batch, steps=setting.decode_steps,
                                tokens_per_s=significant(rate), ms_per_step=significant(1e3 * t["median_s"]
                                                                                         / setting.decode_steps),
                                bytes_per_step=moved, bandwidth_limit_tokens_per_s=significant(limit),
                                bandwidth_fraction=significant(rate / limit, 3), repeats=t["repeats"]))
        t = runner.time_prefill(setting.image_batch)
        figures.append(dict(base, figure="images_per_s", batch=setting.image_batch,
                            images_per_s=significant(setting.image_batch / t["median_s"]),
                            ms_per_batch=significant(1e3 * t["median_s"]), repeats=t["repeats"]))
    finally:
        runner.close()
    return figures


def ratios(figures: list[dict]) -> list[dict]:
    """LLaVA-v1.5 / LLaVA-Mini and PyTorch / JAX time ratios of every figure measured both ways."""
    def value(f):  # seconds per unit of work (larger = slower)
        if f["figure"] == "ttft_ms":
            return f["ms"]
        if f["figure"] == "decode_tokens_per_s":
            return 1.0 / f["tokens_per_s"]
        return 1.0 / f["images_per_s"]
    table = {(f["backend"], f["mode"], f["figure"], f["batch"]): value(f) for f in figures}
    out = []
    for (backend, mode, figure, batch), v in sorted(table.items()):
        if mode == "mini" and (backend, "baseline", figure, batch) in table:
            out.append({"benchmark": "latency", "figure": "baseline_over_mini", "of": figure, "batch": batch,
                        "backend": backend, "ratio": significant(table[(backend, "baseline", figure, batch)] / v, 4)})
    for (backend, mode, figure, batch), v in sorted(table.items()):
        if backend == "jax" and ("torch", mode, figure, batch) in table:
            out.append({"benchmark": "latency", "figure": "torch_over_jax", "of": figure, "batch": batch,
                        "mode": mode, "ratio": significant(table[("torch", mode, figure, batch)] / v, 4)})
    return out


def run(setting: Setting, modes=MODES, check_parity: bool = True) -> list[dict]:
    results: list[dict] = []
    if check_parity and "torch" in setting.backends:
        emit(parity(modes), results)
    bandwidth = emit(measure_bandwidth(setting.bandwidth_mib, jnp.dtype(setting.dtype)), results)
    timed = []
    for backend in setting.backends:
        for mode in modes:
            for figure in measure(backend, mode, setting, bandwidth["gb_per_s"]):
                timed.append(emit(figure, results))
    for figure in ratios(timed):
        emit(figure, results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU; seconds")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu",
                        help="gpu (default: real size, bf16) or cpu-1b (the 1B-class shape, float32, on CPU)")
    parser.add_argument("--llm", choices=("vicuna-7b", "llama-3.1-8b", "llama-1b"), default=None)
    parser.add_argument("--backends", default=None, help="comma list of jax,torch (default both)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of baseline,mini")
    parser.add_argument("--image-batch", type=int, default=None)
    parser.add_argument("--decode-steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--decode-batches", default=None, help="comma list of decode batch sizes")
    parser.add_argument("--no-parity", action="store_true", help="skip the tiny JAX == PyTorch check")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/latency.json; "
                                                    "none with --tiny)")
    args = parser.parse_args(argv)
    setting = TINY if args.tiny else PRESETS[args.preset]
    overrides = {}
    if args.llm and not args.tiny:
        overrides["llm"] = args.llm
    if args.backends:
        overrides["backends"] = tuple(b for b in args.backends.split(",") if b)
        if not set(overrides["backends"]) <= set(RUNNERS):
            parser.error(f"--backends: expected a comma list of {sorted(RUNNERS)}")
    modes = tuple(m for m in args.modes.split(",") if m)
    if not set(modes) <= set(MODES):
        parser.error(f"--modes: expected a comma list of {MODES}")
    for name in ("image_batch", "decode_steps", "repeats"):
        if getattr(args, name) is not None:
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1")
            overrides[name] = getattr(args, name)
    if args.decode_batches:
        try:
            overrides["decode_batches"] = tuple(int(b) for b in args.decode_batches.split(",") if b)
        except ValueError:
            parser.error(f"--decode-batches: expected a comma list of integers, got {args.decode_batches!r}")
    setting = dataclasses.replace(setting, **overrides)
    if not args.tiny and args.preset == "gpu" and jax.default_backend() == "cpu":
        parser.error("the real-size latency run needs a GPU (use --preset cpu-1b or --tiny on CPU)")
    results = run(setting, modes, check_parity=not args.no_parity)
    out = args.out or (default_out("latency", args.tiny) if args.preset == "gpu"
                       else str(RESULTS / f"latency_{args.preset.replace('-', '_')}.json"))
    command = "python -m benchmarks.latency " + " ".join(sys.argv[1:] if argv is None else argv)
    extra = {"note": PRESET_NOTES[args.preset]} if args.preset in PRESET_NOTES and not args.tiny else {}
    write_results(None if args.tiny and not args.out else out, "latency", dataclasses.asdict(setting), results,
                  paper_latency_ms=PAPER_LATENCY_MS, command=command.strip(), **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
