"""Long video: how many frames fit in 24 GiB, from generate's compiled programs, and measured on a GPU.

Three parts:
- `analytic` (any machine, from the configs): bytes per frame of the vision tokens and of their KV
  cache at the real size (LLaVA-Mini 1 token per frame, LLaVA-v1.5 576; the paper's 0.6 MB vs
  360 MB per image), the weights, and how many frames a 24 GiB budget holds by that arithmetic.
- `planned` (CPU, any machine: the figure README quotes): the programs `generate` runs for one
  request (a chunk of uint8 frames into the vision-token buffer, splice + chunked prefill, the
  decode loop), lowered at the real size from abstract shapes (nothing is allocated) for
  Vicuna-7B and Llama-3.1-8B in bf16 and compiled by XLA:CPU. A program's peak is every weight
  (resident throughout) + its other arguments (buffers, cache) + outputs not aliased to them +
  its temporaries (`memory_analysis()`); the request's peak is the largest, and the frames in the
  budget the largest frame bucket whose peak fits (`generate` pads frames to buckets of 1,024
  above 1,024 frames and sizes the cache for the bucket). XLA:CPU has no bf16 matrix multiply: it
  multiplies in float32 from float32 copies of the weights, which a GPU never makes. The plan turns
  off `while-loop-invariant-code-motion` (otherwise XLA:CPU hoists the copies of every layer out
  of the layer loop: twice the weights), and reports what remains, `cpu_weight_copies_bytes` (the
  LM head and one layer of the largest stack, in float32), and the figure without them.
- measured points (GPU; `--tiny` runs the same code on CPU): one request of `frames` frames + a
  `prompt_tokens`-token prompt -> `max_new_tokens` answer tokens, random bf16 weights, two ways:
  - `generate`: the library (`llava_mini_jax.generate`): uint8 frames streamed from the host a chunk
    at a time, normalised on the device, CLIP + compressor + pre-fusion per chunk into the
    vision-token buffer, chunked prefill, decode loop on the device;
  - `resident`: the whole float video on the device, `splice_inputs` and a one-pass prefill (the
    way before streaming: pixels and `S x S` attention scores grow with the video).
  Each point reports the device's peak memory (`memory_stats`; measured in a fresh process per
  point on a GPU so peaks do not carry over), the plan (above; `resident`: its program), compile
  and run seconds (`generate` runs twice: `first_call_s` compiles, `seconds` is the second call),
  and the first tokens (the two ways must agree). A point that runs out of memory
  is reported with `fits: false`, and larger frame counts of that way are skipped. Then, per way,
  a linear fit of memory against frames and the largest frame count within the budget.

    python -m benchmarks.video_memory --planned         # CPU; benchmarks/results/video_memory_planned.json
    python -m benchmarks.video_memory --analytic-only   # CPU; benchmarks/results/video_memory_analytic.json
    python -m benchmarks.video_memory                   # GPU; benchmarks/results/video_memory.json
    python -m benchmarks.video_memory --tiny            # CPU, seconds (the test suite)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
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
from llava_mini_jax.generate import bucket_length, generate, init_kv_cache, programs, static_shapes
from llava_mini_jax.model import LlavaMini

STRATEGIES = ("generate", "resident")
PLAN_XLA_FLAGS = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"


@dataclasses.dataclass(frozen=True)
class Setting:
    llm: str
    prompt_tokens: int
    max_new_tokens: int
    frames: dict  # mode -> frame counts, ascending
    video_chunk_size: int
    prefill_chunk: int
    budget_gib: float
    dtype: str
    isolate: bool
    strategies: tuple[str, ...] = STRATEGIES
    weight_std: float = 0.02  # the tiny run uses O(1) activations so `strategies_agree` means something
    planned_llms: tuple[str, ...] = ("vicuna-7b", "llama-3.1-8b")
    planned_frames: tuple[int, ...] = (10000, 15000, 20000)
    plan_limit_frames: int = 64 * 1024  # the frame-bucket search stops here
    plan_budget_gib: Optional[float] = None  # None: budget_gib
    tiny: bool = False


FULL = Setting(llm="vicuna-7b", prompt_tokens=64, max_new_tokens=64,
               frames={"mini": (1000, 2000, 5000, 10000, 15000, 20000), "baseline": (8, 16, 32)},
               video_chunk_size=16, prefill_chunk=128, budget_gib=24.0, dtype="bfloat16", isolate=True)
TINY = Setting(llm="tiny", prompt_tokens=8, max_new_tokens=4, frames={"mini": (4, 8), "baseline": (4,)},
               video_chunk_size=4, prefill_chunk=8, budget_gib=24.0, dtype="float32", isolate=False, weight_std=0.2,
               planned_llms=("tiny",), planned_frames=(4, 8), plan_limit_frames=64, plan_budget_gib=0.000918, tiny=True)


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
        # an XLA one-pass prefill holds one [heads, T, T] float32 score matrix
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


# -- the plan: generate's compiled programs at abstract shapes ------------------------------------------------
def _nbytes(*trees) -> int:
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for t in trees for x in jax.tree.leaves(t)))


def _layer_bytes(stack) -> int:
    """Bytes of one layer of a scanned stack (params stacked on a leading `layers` axis)."""
    leaves = jax.tree.leaves(stack)
    return _nbytes(stack) // leaves[0].shape[0] if leaves else 0


def cpu_weight_copies(params, itemsize: int) -> dict:
    """Float32 copies XLA:CPU makes to multiply bf16 weights (see the module docstring), per program:
    the LM head and one LLM layer (prefill, decode); one CLIP and one pre-fusion layer (encode)."""
    if itemsize >= 4:
        return {"encode_chunk": 0, "prefill": 0, "decode": 0}
    widen = 4 // itemsize
    llm = params["llm"]
    head = _nbytes(llm.get("lm_head", {})) * widen
    llm_layer = _layer_bytes(llm["decoder"]["layers"]) * widen
    clip_layers = [v for k, v in _find(params.get("vision_tower", {}), "layers")]
    clip_layer = max((_layer_bytes(t) for t in clip_layers), default=0) * widen
    pre_layer = _layer_bytes(params["prefusion"]["layers"]) * widen if "prefusion" in params else 0
    return {"encode_chunk": max(clip_layer, pre_layer), "prefill": head + llm_layer, "decode": head + llm_layer}


def _find(tree, key):
    """(key, subtree) pairs named `key` anywhere in a nested dict."""
    if not isinstance(tree, dict):
        return []
    found = [(key, tree[key])] if key in tree else []
    for k, v in tree.items():
        if k != key:
            found += _find(v, key)
    return found


@functools.lru_cache(maxsize=64)
def plan_request(model: LlavaMini, frames: int, prompt_tokens: int, max_new_tokens: int, prefill_chunk: int) -> dict:
    """Peak bytes of each program `generate` runs for one request of `frames` uint8 frames (LLaVA-Mini
    or baseline, one view per frame) and a `prompt_tokens`-token prompt, from XLA's plan of the programs
    compiled at abstract shapes. Returns the shapes, per-program peaks and the request's peak."""
    cfg = model.config
    params = abstract_param_tree(model)
    weights = _nbytes(params)
    per_frame = cfg.tokens_per_frame
    shapes = static_shapes(model, prompt_tokens + 1, "video", frames, per_frame, max_new_tokens, prefill_chunk)
    progs = programs(model)
    sds = jax.ShapeDtypeStruct
    d, v = cfg.llm.hidden_size, cfg.vision
    ids = sds((1, shapes.width), jnp.int32)
    vision = sds((1, shapes.frames * per_frame, d), model.dtype)
    text = sds((1, shapes.width, d), jnp.float32)
    chunk = sds((1, shapes.chunk_frames, 1, v.image_size, v.image_size, v.num_channels), jnp.uint8)
    table, valid = sds((3, 256), jnp.float32), sds((shapes.chunk_frames,), jnp.bool_)
    cache = jax.eval_shape(lambda: init_kv_cache(cfg, 1, shapes.cache_size, model.dtype))
    key = jax.random.key(0)
    one = sds((1,), jnp.int32)

    def peak(compiled, others: int) -> dict:
        """Weights + the program's other arguments + outputs not aliased to them + temporaries."""
        plan = planned_bytes(compiled)
        total = weights + others + plan["output_bytes"] - plan["alias_bytes"] + plan["temp_bytes"]
        return {"peak_bytes": total, "temp_bytes": plan["temp_bytes"]}

    out = {}
    out["encode_chunk"] = peak(progs.encode_chunk.lower(params, vision, text, chunk, table, ids, valid,
                                                        jnp.int32(0)).compile(),
                               _nbytes(vision, text, table, ids, valid) + 2 * _nbytes(chunk))  # next chunk in flight
    out["prefill"] = peak(progs.prefill.lower(params, ids, ids, None, None, vision, text, jnp.int32(frames), key,
                                              cache_size=shapes.cache_size, chunk=shapes.prefill_chunk, cut=None,
                                              per_frame=per_frame).compile(),
                          _nbytes(vision, text, ids, ids))
    out["decode"] = peak(progs.decode.lower(params, one, one, cache, key, jnp.int32(max_new_tokens),
                                            sds((cfg.llm.vocab_size,), jnp.bool_), jnp.int32(0),
                                            steps=shapes.steps).compile(),
                         _nbytes(cache, one, one))
    copies = cpu_weight_copies(params, jnp.dtype(model.dtype).itemsize)
    return {"shapes": shapes._asdict(), "weight_bytes": weights, "programs": out,
            "peak_bytes": max(p["peak_bytes"] for p in out.values()),
            "peak_bytes_without_cpu_copies": max(p["peak_bytes"] - copies[k] for k, p in out.items()),
            "cpu_weight_copies_bytes": copies}


def frame_buckets(limit: int = 64 * 1024) -> list[int]:
    """Every padded frame count `generate` uses: powers of two to 1,024, then multiples of 1,024."""
    return sorted({bucket_length(n, 1) for n in range(1, 1025)} | set(range(2048, limit + 1, 1024)))


def planned(setting: Setting, llm: str) -> list[dict]:
    """The plan of `setting.planned_frames` requests and the largest frame bucket whose peak fits the
    budget (binary search over the buckets), raw and without XLA:CPU's weight copies."""
    dtype = jnp.dtype(setting.dtype)
    cfg = model_config(llm, "mini", TINY_STANDARD if setting.tiny else STANDARD)
    model = LlavaMini(cfg, dtype=dtype, param_dtype=dtype, video_chunk_size=setting.video_chunk_size)
    budget_gib = setting.budget_gib if setting.plan_budget_gib is None else setting.plan_budget_gib
    budget = budget_gib * GIB
    cache: dict = {}

    def plan(frames: int) -> dict:
        if frames not in cache:
            begin = time.perf_counter()
            cache[frames] = dict(plan_request(model, frames, setting.prompt_tokens, setting.max_new_tokens,
                                              setting.prefill_chunk))
            cache[frames]["compile_s"] = round(time.perf_counter() - begin, 1)
        return cache[frames]

    def figure(frames: int, what: str) -> dict:
        p = plan(frames)
        return {"benchmark": "video_memory", "figure": what, "llm": llm, "mode": "mini", "dtype": setting.dtype,
                "frames": frames, "prompt_tokens": setting.prompt_tokens, "max_new_tokens": setting.max_new_tokens,
                "video_chunk_size": setting.video_chunk_size, "prefill_chunk": setting.prefill_chunk,
                "padded_frames": p["shapes"]["frames"], "cache_size": p["shapes"]["cache_size"],
                "prompt_len": p["shapes"]["prompt_len"], "weight_bytes": p["weight_bytes"],
                "peak_bytes": p["peak_bytes"], "peak_gib": round(p["peak_bytes"] / GIB, 3),
                "peak_gib_without_cpu_copies": round(p["peak_bytes_without_cpu_copies"] / GIB, 3),
                "cpu_weight_copies_gib": {k: round(b / GIB, 3) for k, b in p["cpu_weight_copies_bytes"].items()},
                "program_peak_gib": {k: round(q["peak_bytes"] / GIB, 3) for k, q in p["programs"].items()},
                "program_temp_gib": {k: round(q["temp_bytes"] / GIB, 3) for k, q in p["programs"].items()},
                "compile_s": p["compile_s"], "budget_gib": budget_gib,
                "within_budget": p["peak_bytes"] <= budget,
                "within_budget_without_cpu_copies": p["peak_bytes_without_cpu_copies"] <= budget}

    results = [figure(f, "planned_point") for f in setting.planned_frames]
    for key in ("peak_bytes", "peak_bytes_without_cpu_copies"):
        buckets = frame_buckets(setting.plan_limit_frames)
        lo, hi = -1, len(buckets)  # buckets[lo] fits, buckets[hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if plan(buckets[mid])[key] <= budget:
                lo = mid
            else:
                hi = mid
        best = buckets[lo] if lo >= 0 else 0
        fig = {"benchmark": "video_memory", "figure": "planned_fit", "llm": llm, "memory": key,
               "dtype": setting.dtype, "budget_gib": budget_gib, "frames_in_budget": best,
               "prefill_chunk": setting.prefill_chunk,
               "video_chunk_size": setting.video_chunk_size, "prompt_tokens": setting.prompt_tokens,
               "max_new_tokens": setting.max_new_tokens,
               "peak_gib_at_it": round(plan(best)[key] / GIB, 3) if best else None,
               "next_bucket": buckets[hi] if hi < len(buckets) else None,
               "peak_gib_at_next_bucket": round(plan(buckets[hi])[key] / GIB, 3) if hi < len(buckets) else None}
        results.append(fig)
    return results


def planned_in_subprocess(setting: Setting, llm: str) -> list[dict]:
    """`planned` in a fresh process whose XLA:CPU keeps the weight copies inside the layer loop."""
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + PLAN_XLA_FLAGS).strip(),
               JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "benchmarks.video_memory", "--plan-one", llm, "--prefill-chunk",
           str(setting.prefill_chunk), "--video-chunk-size", str(setting.video_chunk_size), "--budget-gib",
           str(setting.budget_gib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"planning {llm} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


# -- one measured point -------------------------------------------------------------------------------------
class Point:
    """Model, weights and frames of one mode, reused across its frame counts."""

    def __init__(self, setting: Setting, mode: str):
        self.setting, self.mode = setting, mode
        self.dtype = jnp.dtype(setting.dtype)
        variant = TINY_STANDARD if setting.tiny else STANDARD
        self.cfg = model_config(setting.llm, mode, variant)
        self.model = LlavaMini(self.cfg, dtype=self.dtype, param_dtype=self.dtype,
                               video_chunk_size=setting.video_chunk_size)
        self.params = random_params_on_device(self.model, std=setting.weight_std)
        v = self.cfg.vision
        self.frame = np.random.default_rng(0).integers(0, 256, (v.image_size, v.image_size, v.num_channels),
                                                       dtype=np.uint8)
        self.ids = prompt_ids(self.cfg, setting.prompt_tokens, 1)

    def video(self, frames: int) -> np.ndarray:
        """uint8 `[1, T, 1, H, W, 3]`, one frame repeated (a view: no host copy; the content does not
        change the work)."""
        return np.broadcast_to(self.frame, (1, frames, 1) + self.frame.shape)

    def generate(self, frames: int):
        """The library: `generate` on uint8 frames. Returns (run, plan)."""
        s = self.setting
        video = self.video(frames)
        plan = plan_request(self.model, frames, s.prompt_tokens, s.max_new_tokens, s.prefill_chunk) \
            if self.mode == "mini" else None

        def call():
            return generate(self.model, self.params, self.ids, images=video, max_new_tokens=s.max_new_tokens,
                            eos_token_ids=(), prefill_chunk=s.prefill_chunk)
        begin = time.perf_counter()
        call()  # compiles generate's programs for this frame bucket (and runs them once)
        self.first_call_s = round(time.perf_counter() - begin, 3)
        return call, None if plan is None else plan["peak_bytes"]

    def resident(self, frames: int):
        """The whole float video on the device, `splice_inputs` and one prefill pass, then greedy
        decoding step by step. Returns (run, plan)."""
        from llava_mini_jax.image_processing import normalize
        model, s = self.model, self.setting
        pixels = jax.device_put(normalize(self.frame))  # [3, H, W]
        video = jax.jit(lambda p: jnp.broadcast_to(p, (1, frames, 1) + p.shape))(pixels)
        del pixels
        embeds_len = self.ids.shape[1] - 1 + frames * self.cfg.tokens_per_frame
        slots = embeds_len + s.max_new_tokens

        def first(p, ids, images):
            embeds, mask, _ = model.apply({"params": p}, ids, None, images, method="splice_inputs")
            cache = init_kv_cache(self.cfg, 1, slots, model.dtype)
            logits, cache = model.apply({"params": p}, embeds, mask, cache, method="prefill")
            return jnp.argmax(logits, -1).astype(jnp.int32), cache

        def step(p, token, index, cache):
            logits, cache = model.apply({"params": p}, token, index, cache, method="decode_step")
            return jnp.argmax(logits, -1).astype(jnp.int32), cache
        compiled = jax.jit(first).lower(self.params, self.ids, video).compile()
        plan = planned_bytes(compiled)
        step_c = jax.jit(step, donate_argnums=(3,))

        def run():
            token, cache = compiled(self.params, self.ids, video)
            out = [token]
            for t in range(1, s.max_new_tokens):
                token, cache = step_c(self.params, token, jnp.full((1,), embeds_len + t - 1, jnp.int32), cache)
                out.append(token)
            return np.stack([np.asarray(o) for o in out], axis=1)
        if plan is None:
            return run, None
        others = _nbytes(self.ids, video)  # every weight stays resident, used by this program or not
        return run, _nbytes(self.params) + others + plan["output_bytes"] + plan["temp_bytes"]

    def measure(self, strategy: str, frames: int) -> tuple[dict, Optional[np.ndarray]]:
        """The figure of one point (and its tokens, for the consistency check)."""
        s = self.setting
        figure = {"benchmark": "video_memory", "figure": "point", "llm": s.llm, "mode": self.mode,
                  "strategy": strategy, "frames": frames, "video_seconds_at_1fps": frames,
                  "llm_tokens": s.prompt_tokens + frames * self.cfg.tokens_per_frame,
                  "video_chunk_size": s.video_chunk_size,
                  "prefill_chunk": s.prefill_chunk if strategy == "generate" else None}
        tokens, planned_peak = None, None
        try:
            begin = time.perf_counter()
            run, planned_peak = getattr(self, strategy)(frames)
            compiled = time.perf_counter()
            tokens = np.asarray(run())
            done = time.perf_counter()
            figure.update(fits=True, compile_s=round(compiled - begin, 3), seconds=round(done - compiled, 3),
                          tokens=tokens[0].tolist())
            if strategy == "generate":  # its compile happens inside the first call
                figure["first_call_s"] = self.first_call_s
        except Exception as error:  # noqa: BLE001 - an out-of-memory point is a result, anything else is not
            if not is_out_of_memory(error):
                raise
            figure.update(fits=False, error=str(error).splitlines()[0][:300])
        peak = peak_device_bytes()
        figure.update(peak_bytes=peak, peak_gib=None if peak is None else round(peak / GIB, 3),
                      planned_peak_bytes=planned_peak,
                      planned_peak_gib=round(planned_peak / GIB, 3) if planned_peak else None)
        measured = peak if peak is not None else planned_peak
        if measured is not None:
            figure["within_budget"] = bool(figure["fits"] and measured <= s.budget_gib * GIB)
        gc.collect()
        return figure, tokens


# -- running the points ----------------------------------------------------------------------------------------
def point_in_subprocess(setting: Setting, mode: str, strategy: str, frames: int) -> dict:
    """One point in a fresh process, so its device peak is its own."""
    cmd = [sys.executable, "-m", "benchmarks.video_memory", "--point", f"{mode}:{strategy}:{frames}", "--llm",
           setting.llm, "--video-chunk-size", str(setting.video_chunk_size), "--prefill-chunk",
           str(setting.prefill_chunk), "--budget-gib", str(setting.budget_gib)]
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
    ok = [p for p in ok if p.get(key)]
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
        tokens = {}
        for strategy in setting.strategies:
            measured = []
            for frames in counts:
                if setting.isolate:
                    figure = point_in_subprocess(setting, mode, strategy, frames)
                    tokens[(strategy, frames)] = figure.get("tokens")
                else:
                    figure, tokens[(strategy, frames)] = point.measure(strategy, frames)
                measured.append(emit(figure, results))
                if not figure.get("fits"):
                    break  # larger counts will not fit either
            emit(fit(measured, setting.budget_gib), results)
        if len(setting.strategies) == 2:
            for frames in counts:
                a, b = tokens.get((STRATEGIES[0], frames)), tokens.get((STRATEGIES[1], frames))
                if a is not None and b is not None:
                    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
                    emit({"benchmark": "video_memory", "figure": "strategies_agree", "mode": mode, "frames": frames,
                          "same_tokens": bool(np.array_equal(a, b)), "tokens": len(a)}, results)
        del point
        gc.collect()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU; seconds")
    parser.add_argument("--analytic-only", action="store_true", help="only the per-frame arithmetic (any machine)")
    parser.add_argument("--planned", action="store_true",
                        help="only the plan of generate's programs at the real size (CPU, minutes)")
    parser.add_argument("--llm", choices=("vicuna-7b", "llama-3.1-8b"), default=None)
    parser.add_argument("--frames", default=None, help="mini frame counts, comma separated")
    parser.add_argument("--baseline-frames", default=None, help="LLaVA-v1.5 frame counts, comma separated")
    parser.add_argument("--strategies", default=None, help=f"comma list of {','.join(STRATEGIES)}")
    parser.add_argument("--video-chunk-size", type=int, default=None)
    parser.add_argument("--prefill-chunk", type=int, default=None)
    parser.add_argument("--budget-gib", type=float, default=None)
    parser.add_argument("--no-isolate", action="store_true", help="all points in this process")
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)  # mode:strategy:frames, one subprocess point
    parser.add_argument("--plan-one", default=None, help=argparse.SUPPRESS)  # one LLM's plan, in a subprocess
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/video_memory.json, "
                                                    "video_memory_planned.json or video_memory_analytic.json; none "
                                                    "with --tiny)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.video_memory"] + list(sys.argv[1:] if argv is None else argv))
    setting = TINY if args.tiny else FULL
    over: dict = {}
    if args.llm and not args.tiny:
        over["llm"] = args.llm
        over["planned_llms"] = (args.llm,)
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

    if args.plan_one:
        for figure in planned(setting, args.plan_one):
            emit(figure)
        return 0
    if args.analytic_only:
        results: list[dict] = []
        for llm in (("vicuna-7b", "llama-3.1-8b") if not args.llm else (args.llm,)):
            for figure in analytic(llm, setting.budget_gib):
                emit(figure, results)
        write_results(args.out or default_out("video_memory_analytic", args.tiny), "video_memory_analytic",
                      {"budget_gib": setting.budget_gib, "prompt_tokens": 64, "dtype": "bfloat16"}, results,
                      command=command)
        return 0
    if args.planned or args.tiny:
        results = []
        for llm in setting.planned_llms:
            figures = planned(setting, llm) if args.tiny else planned_in_subprocess(setting, llm)
            for figure in figures:
                emit(figure, results)
        if args.planned:
            setting_doc = {k: v for k, v in dataclasses.asdict(setting).items() if k not in ("frames", "isolate",
                                                                                             "strategies")}
            write_results(args.out or default_out("video_memory_planned", False), "video_memory_planned",
                          dict(setting_doc, xla_flags=PLAN_XLA_FLAGS), results, command=command)
            return 0
    else:
        results = []
    if args.point:
        mode, strategy, count = args.point.split(":")
        emit(Point(setting, mode).measure(strategy, int(count))[0])
        return 0
    if not args.tiny and jax.default_backend() == "cpu":
        parser.error("the measured points need a GPU (use --tiny, --planned or --analytic-only on CPU)")
    results += run(setting)
    write_results(args.out or default_out("video_memory", args.tiny), "video_memory", dataclasses.asdict(setting),
                  results, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
