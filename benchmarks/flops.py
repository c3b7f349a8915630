"""FLOPs per request from XLA's cost analysis, LLaVA-Mini against LLaVA-v1.5 mode, at the paper's sizes.

Every count is `jax.jit(fn).lower(*ShapeDtypeStructs).cost_analysis()["flops"]`: the jitted forward
is lowered on abstract shapes, so no weight is allocated and it runs on any CPU (an unrolled
8B-parameter model lowers in seconds with a few hundred MB of RAM). Models are built with
`scan_layers=False` because XLA's cost analysis counts a while-loop (scan) body once, not once per
layer (checked by `scan_undercount`, printed as its own figure).

One request is one image (336 px: one view; HD 672 px: 2x2 tiles + a global view) and a prompt of
`--prompt-tokens` text tokens, answered with one token:
- `prefill`: splice + CLIP + compressor + projector + pre-fusion + the LLM over the spliced prompt,
  writing a KV cache of `L' + 1` slots and producing the first answer token (the paper's "FLOPs per
  image"); `decode`: one more token from that cache.
- `components`: each part lowered on its own (CLIP, compressor, projector, pre-fusion, LLM prefill);
  `glue` is the end-to-end count minus their sum (embedding gather, splice, masks).
- `analytic`: `2 * matmul params * tokens + attention` per component from the config (attention
  `4 * T * S * width` per layer, dense over the masked keys as XLA computes it), so the XLA figure
  can be trusted.

    python -m benchmarks.flops              # Vicuna-7B and Llama-3.1-8B; benchmarks/results/flops.json
    python -m benchmarks.flops --tiny       # tiny configs; seconds (the test suite)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks.common import (PAPER_TFLOPS, Variant, abstract_param_tree, default_out, emit, model_config,
                    request_shapes, rounded, significant, variants, vision_tokens, write_results)
from llava_mini_jax.flops import decode_flops as analytic_decode_flops
from llava_mini_jax.flops import llama_layer_flops
from llava_mini_jax.flops import request_flops as analytic_request_flops
from llava_mini_jax.config import LlavaMiniConfig
from llava_mini_jax.generate import init_kv_cache
from llava_mini_jax.model import LlavaMini
from llava_mini_jax.prefusion import prefusion_attention, prefusion_positions

TERA = 1e12
DTYPE = jnp.bfloat16


@dataclasses.dataclass(frozen=True)
class Request:
    """Token counts of one request: `text` = input_ids length (prompt + placeholder), `vision` = M
    tokens spliced, `spliced` = L' = text - 1 + M, `cache` = L' + 1 slots."""

    text: int
    vision: int

    @property
    def spliced(self) -> int:
        return self.text - 1 + self.vision

    @property
    def cache(self) -> int:
        return self.spliced + 1


# -- XLA counts -----------------------------------------------------------------------------------------
def xla_flops(fn, *args) -> float:
    """FLOPs XLA's cost analysis assigns to `jax.jit(fn)` lowered on abstract `args`."""
    cost = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def _sds(shape, dtype=DTYPE):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _cache(cfg: LlavaMiniConfig, size: int):
    return jax.tree.map(lambda a: _sds(a.shape, a.dtype), jax.eval_shape(lambda: init_kv_cache(cfg, 1, size, DTYPE)))


def component_flops(model: LlavaMini, params, variant: Variant, req: Request) -> dict:
    """XLA FLOPs of each part of a request, lowered separately (batch 1)."""
    cfg = model.config
    v, d, dm = cfg.vision, cfg.vision.hidden_size, cfg.llm.hidden_size
    n, parts = v.num_patches, variant.parts
    apply = lambda f: (lambda p, *a: model.apply({"params": p}, *a, method=f))  # noqa: E731
    out = {"clip": xla_flops(apply(lambda m, x: m.vision_features(x)), params,
                             _sds((parts, v.num_channels, v.image_size, v.image_size)))}
    if cfg.is_mini:
        tiles = (parts - 1) * n
        keys = tiles if parts > 1 else n
        q = cfg.compressor_size ** 2
        out["compressor"] = xla_flops(apply(lambda m, x: m.compressor(x)[0]), params, _sds((1, keys, d)))
        out["projector"] = xla_flops(apply(lambda m, x: m.mm_projector(x)), params, _sds((1, tiles + n + q, d)))
        image = tiles + n + q

        def prefusion(m, x, text_mask):
            positions, key_mask = prefusion_positions(image, text_mask)
            return m.prefusion(x, positions, prefusion_attention(key_mask))[0]
        out["prefusion"] = xla_flops(apply(prefusion), params, _sds((1, image + req.text, dm)),
                                     _sds((1, req.text), jnp.bool_))
    else:
        out["projector"] = xla_flops(apply(lambda m, x: m.mm_projector(x)), params, _sds((1, parts * n, d)))
    out["llm_prefill"] = xla_flops(apply(lambda m, e, k, c: m.prefill(e, k, c)[0]), params,
                                   _sds((1, req.spliced, dm)), _sds((1, req.spliced), jnp.bool_),
                                   _cache(cfg, req.cache))
    return out


def request_flops(model: LlavaMini, params, variant: Variant, prompt_tokens: int) -> tuple[float, float]:
    """End-to-end XLA FLOPs `(prefill, decode)` of one request, as `generate` runs it."""
    cfg = model.config
    shapes = request_shapes(cfg, variant.parts, prompt_tokens, pixel_dtype=DTYPE)
    req = Request(prompt_tokens + 1, vision_tokens(cfg, variant.parts))

    def prefill(p, ids, images):
        embeds, mask, _ = model.apply({"params": p}, ids, None, images, method="splice_inputs")
        cache = init_kv_cache(cfg, ids.shape[0], req.cache, DTYPE)
        return model.apply({"params": p}, embeds, mask, cache, method="prefill")

    def decode(p, tokens, index, cache):
        return model.apply({"params": p}, tokens, index, cache, method="decode_step")

    pre = xla_flops(prefill, params, shapes["input_ids"], shapes["images"])
    dec = xla_flops(decode, params, _sds((1,), jnp.int32), _sds((1,), jnp.int32), _cache(cfg, req.cache))
    return pre, dec


# -- analytic counts -------------------------------------------------------------------------------------
def analytic_components(cfg: LlavaMiniConfig, variant: Variant, req: Request, causal: bool = False) -> dict:
    """The same parts as `component_flops`, from the config alone (`llava_mini_jax.flops`;
    `causal`: Llama attention over the causal half only)."""
    return analytic_request_flops(cfg, variant.parts, req.text, causal)


def analytic_decode(cfg: LlavaMiniConfig, req: Request) -> float:
    return analytic_decode_flops(cfg, req.cache)


def marginal_text_token(cfg: LlavaMiniConfig) -> float:
    """Analytic FLOPs one more prompt token adds (LLM, plus the pre-fusion in LLaVA-Mini), ignoring
    its attention: what a different prompt length in the paper would shift."""
    layers = cfg.llm.num_layers + (cfg.prefusion_layers if cfg.is_mini else 0)
    return layers * llama_layer_flops(cfg.llm, 1, 0)


# -- the check that scan is undercounted --------------------------------------------------------------------
def scan_undercount(llm: str, variant: Variant, prompt_tokens: int) -> dict:
    """Prefill FLOPs of one model lowered scanned and unrolled: the scanned count misses all but one
    layer per stack (XLA counts a while body once), which is why the others use `scan_layers=False`."""
    counts = {}
    for scan in (True, False):
        model = LlavaMini(model_config(llm, "mini", variant), dtype=DTYPE, param_dtype=DTYPE, scan_layers=scan)
        counts[scan] = request_flops(model, abstract_param_tree(model), variant, prompt_tokens)[0]
    return {"benchmark": "flops", "figure": "scan_undercount", "llm": llm, "variant": variant.name,
            "scanned_tflops": significant(counts[True] / TERA), "unrolled_tflops": significant(counts[False] / TERA),
            "scanned_over_unrolled": significant(counts[True] / counts[False])}


# -- figures -------------------------------------------------------------------------------------------------
def measure(llm: str, variant: Variant, mode: str, prompt_tokens: int) -> tuple[dict, dict]:
    """The `prefill` and `decode` figures of one (LLM, variant, mode)."""
    cfg = model_config(llm, mode, variant)
    model = LlavaMini(cfg, dtype=DTYPE, param_dtype=DTYPE, scan_layers=False)
    start = time.perf_counter()
    params = abstract_param_tree(model)
    req = Request(prompt_tokens + 1, vision_tokens(cfg, variant.parts))
    prefill, decode = request_flops(model, params, variant, prompt_tokens)
    parts = component_flops(model, params, variant, req)
    analytic = analytic_components(cfg, variant, req)
    causal = sum(analytic_components(cfg, variant, req, causal=True).values())
    paper = PAPER_TFLOPS.get((variant.name, mode)) if llm == "vicuna-7b" else None
    common = {"benchmark": "flops", "llm": llm, "variant": variant.name, "mode": mode,
              "resolution": variant.resolution, "views": variant.parts, "vision_tokens": req.vision,
              "prompt_tokens": prompt_tokens, "llm_tokens": req.spliced}
    pre = dict(common, figure="prefill_tflops", xla_tflops=significant(prefill / TERA),
               analytic_tflops=significant(sum(analytic.values()) / TERA),
               xla_over_analytic=significant(prefill / sum(analytic.values())),
               paper_tflops=paper,
               xla_tflops_without_clip=significant((prefill - parts["clip"]) / TERA),
               analytic_causal_tflops=significant(causal / TERA),
               analytic_causal_tflops_without_clip=significant((causal - analytic["clip"]) / TERA),
               components_tflops={k: significant(x / TERA) for k, x in parts.items()},
               analytic_components_tflops={k: significant(x / TERA) for k, x in analytic.items()},
               glue_tflops=significant((prefill - sum(parts.values())) / TERA),
               marginal_tflops_per_text_token=significant(marginal_text_token(cfg) / TERA),
               seconds=round(time.perf_counter() - start, 2))
    dec = dict(common, figure="decode_gflops", xla_gflops=significant(decode / 1e9),
               analytic_gflops=significant(analytic_decode(cfg, req) / 1e9), cache_slots=req.cache)
    return pre, dec


def reduction(mini: dict, baseline: dict) -> dict:
    """LLaVA-Mini's prefill FLOPs saving against LLaVA-v1.5 mode, ours and the paper's."""
    ours = 1 - mini["xla_tflops"] / baseline["xla_tflops"]
    paper = None
    if mini["paper_tflops"] and baseline["paper_tflops"]:
        paper = 1 - mini["paper_tflops"] / baseline["paper_tflops"]
    gap_m = None if mini["paper_tflops"] is None else mini["xla_tflops"] - mini["paper_tflops"]
    gap_b = None if baseline["paper_tflops"] is None else baseline["xla_tflops"] - baseline["paper_tflops"]
    clip_m, clip_b = mini["components_tflops"]["clip"], baseline["components_tflops"]["clip"]
    return {"benchmark": "flops", "figure": "prefill_reduction", "llm": mini["llm"], "variant": mini["variant"],
            "prompt_tokens": mini["prompt_tokens"], "mini_tflops": mini["xla_tflops"],
            "baseline_tflops": baseline["xla_tflops"], "reduction_pct": rounded(100 * ours, 2),
            "paper_reduction_pct": None if paper is None else rounded(100 * paper, 2),
            "speedup": significant(baseline["xla_tflops"] / mini["xla_tflops"], 4),
            "gap_to_paper_tflops": {"mini": significant(gap_m), "baseline": significant(gap_b)},
            "reduction_pct_without_clip": rounded(100 * (1 - (mini["xla_tflops"] - clip_m)
                                                         / (baseline["xla_tflops"] - clip_b)), 2)}


@dataclasses.dataclass(frozen=True)
class Setting:
    llms: tuple[str, ...]
    prompt_tokens: int
    tiny: bool


FULL = Setting(llms=("vicuna-7b", "llama-3.1-8b"), prompt_tokens=64, tiny=False)
TINY = Setting(llms=("tiny",), prompt_tokens=8, tiny=True)


def run(setting: Setting) -> list[dict]:
    results: list[dict] = []
    for llm in setting.llms:
        for variant in variants(setting.tiny):
            figures = {}
            for mode in ("baseline", "mini"):
                pre, dec = measure(llm, variant, mode, setting.prompt_tokens)
                figures[mode] = pre
                emit(pre, results)
                emit(dec, results)
            emit(reduction(figures["mini"], figures["baseline"]), results)
    emit(scan_undercount(setting.llms[0], variants(setting.tiny)[0], setting.prompt_tokens), results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs; seconds")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="text tokens of the prompt (default 64)")
    parser.add_argument("--llm", action="append", choices=("vicuna-7b", "llama-3.1-8b"),
                        help="LLM(s) to count (default both)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/flops.json; "
                                                    "none with --tiny)")
    args = parser.parse_args(argv)
    setting = TINY if args.tiny else FULL
    if args.llm and not args.tiny:
        setting = dataclasses.replace(setting, llms=tuple(args.llm))
    if args.prompt_tokens is not None:
        if args.prompt_tokens < 1:
            parser.error("--prompt-tokens must be >= 1")
        setting = dataclasses.replace(setting, prompt_tokens=args.prompt_tokens)
    start = time.perf_counter()
    results = run(setting)
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux
    write_results(args.out or default_out("flops", args.tiny), "flops", dataclasses.asdict(setting), results,
                  paper_tflops={f"{v}/{m}": x for (v, m), x in PAPER_TFLOPS.items()},
                  run_seconds=round(time.perf_counter() - start, 1), peak_host_rss_gib=round(peak_rss_gib, 2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
