"""Long video: device memory and seconds from 1,000 to 20,000 frames (1 fps), and what fits in 24 GB.

Two parts:
- `analytic` (any machine, from the configs): bytes per frame of the vision tokens and of their KV
  cache at the real size (LLaVA-Mini 1 token per frame, LLaVA-v1.5 576; the paper's 0.6 MB vs
  360 MB per image), the weights, and how many frames a 24 GiB budget holds by that arithmetic.
- measured points (GPU; `--tiny` runs the same code on CPU): one request = a video of `frames`
  frames + a `prompt_tokens`-token prompt -> first answer token, random bf16 weights, two ways:
  - `library`: the whole video on the device, `splice_inputs` (frames through CLIP, compressor
    and pre-fusion in chunks of `video_chunk_size`, inside one `scan`) and the library's `prefill`;
  - `streamed`: frames sent from the host a chunk at a time through `encode_images` (the text
    features averaged over chunks, as the library does over frames), then the LLM prefilled in
    chunks of `prefill_chunk` tokens through the decoder's KV cache: device memory is weights +
    KV cache + vision tokens, whatever the frame count.
  Each point reports the device's peak memory (`memory_stats`; measured in a fresh process per
  point on a GPU so peaks do not carry over), XLA's planned peak (live arrays + the largest
  program's temporaries, also on CPU), compile and run seconds. A point that runs out of memory
  is reported with `fits: false`, and larger frame counts of that way are skipped. Then, per
  way, a linear fit of memory against frames and the largest frame count within the budget.

    python -m benchmarks.video_memory --analytic-only   # CPU; benchmarks/results/video_memory_analytic.json
    python -m benchmarks.video_memory                   # GPU; benchmarks/results/video_memory.json
    python -m benchmarks.video_memory --tiny            # CPU, seconds (the test suite)
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from typing import Optional

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # measure what the program needs, not a pool
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (GIB, ROOT, PAPER_FRAMES_IN_24GB, PAPER_MB_PER_IMAGE, STANDARD, TINY_STANDARD,
                    abstract_param_tree, default_out, emit, is_out_of_memory, model_config, param_bytes,
                    peak_device_bytes, planned_bytes, prompt_ids, random_params_on_device, significant,
                    write_results)
from llava_mini_jax.generate import chunked_prefill, init_kv_cache
from llava_mini_jax.model import LlavaMini
from llava_mini_jax.splice import splice

STRATEGIES = ("streamed", "library")
POOL = 8  # distinct random frames, cycled (the content does not change the work)


@dataclasses.dataclass(frozen=True)
class Setting:
    llm: str
    prompt_tokens: int
    frames: dict  # mode -> frame counts, ascending
    video_chunk_size: int
    prefill_chunk: int
    budget_gib: float
    dtype: str
    isolate: bool
    strategies: tuple[str, ...] = STRATEGIES
    weight_std: float = 0.02  # the tiny run uses O(1) activations so `strategies_agree` means something
    tiny: bool = False


FULL = Setting(llm="vicuna-7b", prompt_tokens=64,
               frames={"mini": (1000, 2000, 5000, 10000, 15000, 20000), "baseline": (8, 16, 32)},
               video_chunk_size=32, prefill_chunk=2048, budget_gib=24.0, dtype="bfloat16", isolate=True)
TINY = Setting(llm="tiny", prompt_tokens=8, frames={"mini": (4, 8), "baseline": (4,)}, video_chunk_size=4,
               prefill_chunk=8, budget_gib=24.0, dtype="float32", isolate=False, weight_std=0.2, tiny=True)


# -- the arithmetic ----------------------------------------------------------------------------------------
def analytic(llm: str, budget_gib: float = 24.0, prompt_tokens: int = 64, itemsize: int = 2) -> list[dict]:
    """Per-frame bytes and the frames a budget holds, LLaVA-Mini against LLaVA-v1.5, at the real
    size in bf16; one figure per mode."""
    out = []
    for mode in ("baseline", "mini"):
        cfg = model_config(llm, mode, STANDARD)
        c, v = cfg.llm, cfg.vision
        tokens = cfg.tokens_per_frame
        kv_per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * itemsize
        token_bytes = tokens * c.hidden_size * itemsize
        kv_bytes = tokens * kv_per_token
        pixel_bytes = v.num_channels * v.image_size ** 2 * itemsize
        weights = param_bytes(abstract_param_tree(LlavaMini(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)))
        free = budget_gib * GIB - weights - prompt_tokens * kv_per_token
        per_frame_streamed = kv_bytes + token_bytes
        # the library's XLA attention holds one [heads, T, T] float32 score matrix during a full prefill
        score_limit_tokens = int(np.sqrt(max(free, 0) / (c.num_heads * 4)))
        out.append({
            "benchmark": "video_memory", "figure": "analytic_per_frame", "llm": llm, "mode": mode,
            "tokens_per_frame": tokens, "vision_token_bytes_per_frame": token_bytes,
            "kv_bytes_per_token": kv_per_token, "kv_bytes_per_frame": kv_bytes,
            "state_mb_per_frame": significant((kv_bytes + token_bytes) / 1e6, 4),
            "paper_mb_per_image": PAPER_MB_PER_IMAGE[mode], "pixel_bytes_per_frame": pixel_bytes,
            "weight_bytes": weights, "budget_gib": budget_gib,
            "frames_in_budget_streamed": int(max(free, 0) // per_frame_streamed),
            "frames_in_budget_pixels_resident": int(max(free, 0) // (per_frame_streamed + pixel_bytes)),
            "full_prefill_score_matrix_frames_limit": max(0, (score_limit_tokens - prompt_tokens) // tokens),
            "paper_frames_in_24gb": PAPER_FRAMES_IN_24GB if mode == "mini" else None})
    return out


# -- one measured point -------------------------------------------------------------------------------------
class Point:
    """Model, weights and jitted programs of one mode, reused across its frame counts."""

    def __init__(self, setting: Setting, mode: str):
        self.setting, self.mode = setting, mode
        self.dtype = jnp.dtype(setting.dtype)
        variant = TINY_STANDARD if setting.tiny else STANDARD
        self.cfg = model_config(setting.llm, mode, variant)
        self.model = LlavaMini(self.cfg, dtype=self.dtype, param_dtype=self.dtype,
                               video_chunk_size=setting.video_chunk_size)
        self.params = random_params_on_device(self.model, std=setting.weight_std)
        v = self.cfg.vision
        pool = np.random.default_rng(0).standard_normal((POOL, v.num_channels, v.image_size, v.image_size))
        self.pool = pool.astype(np.float32)
        self.ids = jnp.asarray(prompt_ids(self.cfg, setting.prompt_tokens, 1))
        self.planned = 0

    # programs ------------------------------------------------------------------------------------
    def compile(self, fn, *args, donate=()):
        """`jax.jit(fn).lower(*args).compile()`, noting the planned peak of running it now."""
        compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
        plan = planned_bytes(compiled)
        if plan is not None:
            resident = sum(a.nbytes for a in jax.live_arrays())
            args_bytes = sum(a.nbytes for a in jax.tree.leaves(args) if isinstance(a, jax.Array))
            self.planned = max(self.planned, resident - args_bytes + plan["total_bytes"])
        return compiled

    def library(self, frames: int):
        """Whole video on the device; the library's splice_inputs + prefill. Returns last logits."""
        model, cfg, dtype = self.model, self.cfg, self.dtype
        pool = jnp.asarray(self.pool, dtype)
        video = jax.jit(lambda p: p[jnp.arange(frames) % POOL][None, :, None])(pool)
        del pool
        slots = self.setting.prompt_tokens + frames * cfg.tokens_per_frame + 1

        def prefill(p, ids, images):
            embeds, mask, _ = model.apply({"params": p}, ids, None, images, method="splice_inputs")
            cache = init_kv_cache(cfg, 1, slots, dtype)
            return model.apply({"params": p}, embeds, mask, cache, method="prefill")[0]
        run = self.compile(prefill, self.params, self.ids, video)
        return lambda: run(self.params, self.ids, video)

    def streamed(self, frames: int):
        """Frames from the host a chunk at a time, then the library's chunked LLM prefill
        (`generate.chunked_prefill`). Returns last logits."""
        model, cfg, dtype, s = self.model, self.cfg, self.dtype, self.setting
        chunk, step = s.video_chunk_size, s.prefill_chunk
        chunks = [(i, min(chunk, frames - i)) for i in range(0, frames, chunk)]  # (first frame, frames)
        # frame t is pool[t % POOL], as in the library way; one host array per distinct (offset, size)
        host = {(i % POOL, n): self.pool[(i + np.arange(n)) % POOL][None, :, None].astype(dtype) for i, n in chunks}
        sizes = {n for _, n in chunks}
        encode = {n: self.compile(lambda p, ids, x: model.apply({"params": p}, x, ids, method="encode_images"),
                                  self.params, self.ids, jax.ShapeDtypeStruct((1, n, 1) + self.pool.shape[1:], dtype))
                  for n in sizes}
        length = s.prompt_tokens + frames * cfg.tokens_per_frame
        slots = -(-length // step) * step + 1
        d = cfg.llm.hidden_size

        def join(ids, tokens, text):
            return splice(text, tokens, ids, jnp.ones(ids.shape, jnp.int32))[0]

        def prefill(p, embeds, cache):  # the library's chunked prefill: `step x S` attention scores
            return chunked_prefill(model, p, embeds, jnp.ones(embeds.shape[:2], bool), cache, step)[0]

        sds = jax.ShapeDtypeStruct
        tokens_shape = sds((1, frames * cfg.tokens_per_frame, d), dtype)
        join_c = self.compile(join, self.ids, tokens_shape, sds((1, self.ids.shape[1], d), dtype))
        cache_shape = jax.eval_shape(lambda: init_kv_cache(cfg, 1, slots, dtype))
        prefill_c = self.compile(prefill, self.params, sds((1, length, d), dtype), cache_shape, donate=(2,))

        def run():
            pieces, text_sum = [], None
            for i, n in chunks:
                tokens, text = encode[n](self.params, self.ids, jax.device_put(host[(i % POOL, n)]))
                pieces.append(tokens)
                part = text.astype(jnp.float32) * n
                text_sum = part if text_sum is None else text_sum + part
            tokens = jnp.concatenate(pieces, axis=1)
            del pieces
            embeds = join_c(self.ids, tokens, (text_sum / frames).astype(dtype))
            del tokens, text_sum
            return prefill_c(self.params, embeds, init_kv_cache(cfg, 1, slots, dtype))
        return run

    def measure(self, strategy: str, frames: int) -> tuple[dict, Optional[np.ndarray]]:
        """The figure of one point (and its last logits, for the consistency check)."""
        s = self.setting
        figure = {"benchmark": "video_memory", "figure": "point", "llm": s.llm, "mode": self.mode,
                  "strategy": strategy, "frames": frames, "video_seconds_at_1fps": frames,
                  "llm_tokens": s.prompt_tokens + frames * self.cfg.tokens_per_frame,
                  "video_chunk_size": s.video_chunk_size,
                  "prefill_chunk": s.prefill_chunk if strategy == "streamed" else None}
        self.planned = 0
        logits = None
        try:
            begin = time.perf_counter()
            run = getattr(self, strategy)(frames)
            compiled = time.perf_counter()
            logits = np.asarray(jax.block_until_ready(run()), np.float32)
            done = time.perf_counter()
            figure.update(fits=True, compile_s=round(compiled - begin, 3), seconds=round(done - compiled, 3))
        except Exception as error:  # noqa: BLE001 - an out-of-memory point is a result, anything else is not
            if not is_out_of_memory(error):
                raise
            figure.update(fits=False, error=str(error).splitlines()[0][:300])
        peak = peak_device_bytes()
        figure.update(peak_bytes=peak, peak_gib=None if peak is None else round(peak / GIB, 3),
                      planned_peak_bytes=self.planned or None,
                      planned_peak_gib=round(self.planned / GIB, 3) if self.planned else None)
        if peak is not None:
            figure["within_budget"] = bool(figure["fits"] and peak <= s.budget_gib * GIB)
        elif self.planned:
            figure["within_budget"] = bool(figure["fits"] and self.planned <= s.budget_gib * GIB)
        gc.collect()
        return figure, logits


# -- running the points ----------------------------------------------------------------------------------------
def point_in_subprocess(setting: Setting, mode: str, strategy: str, frames: int) -> dict:
    """One point in a fresh process, so its device peak is its own."""
    cmd = [sys.executable, "-m", "benchmarks.video_memory", "--point", f"{mode}:{strategy}:{frames}", "--llm", setting.llm,
           "--video-chunk-size", str(setting.video_chunk_size), "--prefill-chunk", str(setting.prefill_chunk),
           "--budget-gib", str(setting.budget_gib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    return {"benchmark": "video_memory", "figure": "point", "llm": setting.llm, "mode": mode, "strategy": strategy,
            "frames": frames, "fits": False, "error": f"exit {proc.returncode}: {tail[0][:300]}"}


def fit(points: list[dict], budget_gib: float) -> dict:
    """Least-squares `bytes = intercept + slope * frames` over the points that ran, and the frames
    the budget then holds; uses measured peaks where there are any, planned peaks otherwise."""
    ok = [p for p in points if p.get("fits")]
    key = "peak_bytes" if ok and all(p.get("peak_bytes") for p in ok) else "planned_peak_bytes"
    first = points[0]
    out = {"benchmark": "video_memory", "figure": "fit", "llm": first["llm"], "mode": first["mode"],
           "strategy": first["strategy"], "memory": key, "points": len(ok), "budget_gib": budget_gib,
           "largest_measured_within_budget": max((p["frames"] for p in ok if p.get("within_budget")), default=None)}
    if len(ok) >= 2:
        x = np.array([p["frames"] for p in ok], float)
        y = np.array([p[key] for p in ok], float)
        slope, intercept = np.polyfit(x, y, 1)
        out.update(bytes_per_frame=significant(slope, 4), intercept_gib=round(intercept / GIB, 3),
                   frames_in_budget=int((budget_gib * GIB - intercept) // slope) if slope > 0 else None)
    return out


def run(setting: Setting) -> list[dict]:
    results: list[dict] = []
    for figure in analytic(setting.llm, setting.budget_gib, setting.prompt_tokens):
        emit(figure, results)
    for mode, counts in setting.frames.items():
        point = None if setting.isolate else Point(setting, mode)
        logits = {}
        for strategy in setting.strategies:
            measured = []
            for frames in counts:
                if setting.isolate:
                    figure = point_in_subprocess(setting, mode, strategy, frames)
                else:
                    figure, logits[(strategy, frames)] = point.measure(strategy, frames)
                measured.append(emit(figure, results))
                if not figure.get("fits"):
                    break  # larger counts will not fit either
            emit(fit(measured, setting.budget_gib), results)
        if len(setting.strategies) == 2:
            for frames in counts:
                a, b = logits.get((STRATEGIES[0], frames)), logits.get((STRATEGIES[1], frames))
                if a is not None and b is not None:
                    emit({"benchmark": "video_memory", "figure": "strategies_agree", "mode": mode, "frames": frames,
                          "max_abs_logit_diff": float(np.abs(a - b).max()), "max_abs_logit": float(np.abs(b).max())},
                         results)
        del point
        gc.collect()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU; seconds")
    parser.add_argument("--analytic-only", action="store_true", help="only the per-frame arithmetic (any machine)")
    parser.add_argument("--llm", choices=("vicuna-7b", "llama-3.1-8b"), default=None)
    parser.add_argument("--frames", default=None, help="mini frame counts, comma separated")
    parser.add_argument("--baseline-frames", default=None, help="LLaVA-v1.5 frame counts, comma separated")
    parser.add_argument("--strategies", default=None, help=f"comma list of {','.join(STRATEGIES)}")
    parser.add_argument("--video-chunk-size", type=int, default=None)
    parser.add_argument("--prefill-chunk", type=int, default=None)
    parser.add_argument("--budget-gib", type=float, default=None)
    parser.add_argument("--no-isolate", action="store_true", help="all points in this process")
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)  # mode:strategy:frames, one subprocess point
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/video_memory.json, "
                                                    "or video_memory_analytic.json; none with --tiny)")
    args = parser.parse_args(argv)
    setting = TINY if args.tiny else FULL
    over: dict = {}
    if args.llm and not args.tiny:
        over["llm"] = args.llm
    for name in ("video_chunk_size", "prefill_chunk", "budget_gib"):
        value = getattr(args, name)
        if value is not None:
            if value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be positive")
            over[name] = value
    frames = dict(setting.frames)
    for mode, text in (("mini", args.frames), ("baseline", args.baseline_frames)):
        if text is not None:
            frames[mode] = tuple(sorted(int(x) for x in text.split(",") if x))
    over["frames"] = {m: f for m, f in frames.items() if f}
    if args.strategies:
        over["strategies"] = tuple(x for x in args.strategies.split(",") if x)
        if not set(over["strategies"]) <= set(STRATEGIES):
            parser.error(f"--strategies: expected a comma list of {STRATEGIES}")
    if args.no_isolate:
        over["isolate"] = False
    setting = dataclasses.replace(setting, **over)

    if args.analytic_only:
        results: list[dict] = []
        for llm in (("vicuna-7b", "llama-3.1-8b") if not args.llm else (args.llm,)):
            for figure in analytic(llm, setting.budget_gib):
                emit(figure, results)
        write_results(args.out or default_out("video_memory_analytic", args.tiny), "video_memory_analytic",
                      {"budget_gib": setting.budget_gib, "prompt_tokens": 64, "dtype": "bfloat16"}, results)
        return 0
    if args.point:
        mode, strategy, count = args.point.split(":")
        emit(Point(setting, mode).measure(strategy, int(count))[0])
        return 0
    if not args.tiny and jax.default_backend() == "cpu":
        parser.error("the measured points need a GPU (use --tiny or --analytic-only on CPU)")
    results = run(setting)
    write_results(args.out or default_out("video_memory", args.tiny), "video_memory", dataclasses.asdict(setting),
                  results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
