"""Weight-only int8 / int4 quantization (`llava_mini_jax/quantize.py`): memory, accuracy, decode speed.

    python -m benchmarks.quantization                      # memory + fixtures + the demo's toy model (~10 min, CPU)
    python -m benchmarks.quantization --demo-dir demo_out  # reuse a `llava-mini-jax demo` run's LLaVA-Mini export
    python -m benchmarks.quantization --decode             # GPU: decode tokens/s, bf16 / int8 / int4 (8B)
    python -m benchmarks.quantization --decode --tiny      # the same on the tiny model (any backend, seconds)
    python -m benchmarks.quantization --tiny               # seconds (the test suite)

Figures (one JSON line each; all of them in `benchmarks/results/quantization.json`):

- `memory`: parameter bytes of Llama-3.1-8B LLaVA-Mini (CLIP-L/336, 4 pre-fusion layers) from
  abstract shapes (`jax.eval_shape` of the quantized model's init: nothing allocated), bf16 params
  and scales, for bf16 / int8 / int4 with CLIP in bf16 and with CLIP quantized too (`vision`).
- `fixture`: each model fixture of the reference (`tests/fixtures/*`, random tiny weights, float32)
  in int8 and int4 (group 16: the fixtures are 64 wide) against float32: the logits' relative error
  `||q - f|| / ||f||` over the real positions, top-1 agreement there, and greedy decoding of the
  fixture's greedy prompts (8 new tokens, EOS ignored): the share of tokens equal to float32's,
  the share before the first difference, and how many cases are identical; with the float32
  logits' median top-1 margin (in standard deviations over the vocabulary): random weights give
  nearly flat logits, so a small error flips the argmax and greedy paths part early.
- `demo`: the demo's trained toy LLaVA-Mini (`llava-mini-jax demo`'s recipe, seed 0: trained here,
  or `--demo-dir`'s) answering its 400 held-out questions in float32 / int8 / int4 (group 128, or
  the largest divisor of a narrower axis: 64 on its 64-wide LLM) with `ChatSession(quantize=...)`.
- `decode` (`--decode`, GPU): decode tokens/s at batch 1 of the 8B model (random bf16 weights made
  on the device, then quantized there), bf16 / int8 / int4 in the same run, with the ratio to
  bf16; pending a GPU run.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import default_out, emit, model_config, random_params_on_device, significant, write_results
from llava_mini_jax import quantize as quantization
from llava_mini_jax.loading import abstract_params
from llava_mini_jax.model import LlavaMini

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")
MODEL_FIXTURES = ("std", "hd", "video", "textonly", "baseline")
GB = 1e9
GIB = 1024 ** 3


def memory_figures(llm: str, sink: list) -> None:
    cfg = model_config(llm, "mini")
    model = LlavaMini(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    float_bytes = quantization.param_bytes(abstract_params(model))
    emit({"kind": "memory", "llm": llm, "mode": "bf16", "vision": "bf16", "bytes": float_bytes,
          "gb": round(float_bytes / GB, 3), "gib": round(float_bytes / GIB, 3)}, sink)
    for mode in quantization.MODES:
        for vision in (False, True):
            qc = quantization.QuantizeConfig(mode, vision=vision)
            tree = abstract_params(quantization.quantize_model(model, qc))
            b = quantization.param_bytes(tree)
            emit({"kind": "memory", "llm": llm, "mode": mode, "vision": mode if vision else "bf16", "bytes": b,
                  "gb": round(b / GB, 3), "gib": round(b / GIB, 3), "vs_bf16": round(b / float_bytes, 4)}, sink)


def _fixture(name: str):
    from llava_mini_jax import load_pretrained
    d = os.path.join(FIXTURES, name)
    meta = json.load(open(os.path.join(d, "fixture.json")))
    inputs = dict(np.load(os.path.join(d, "inputs.npz")))
    greedy = json.load(open(os.path.join(d, meta["greedy"]))) if meta.get("greedy") else None
    return meta, inputs, greedy, load_pretrained(os.path.join(d, "hf"))


def greedy_tokens(model, params, greedy: dict, inputs: dict, cases: int) -> list[np.ndarray]:
    from llava_mini_jax.generate import generate
    out = []
    for case in greedy["cases"][:cases]:
        k = case.get("images_key")
        out.append(np.asarray(generate(model, params, np.asarray(case["input_ids"]),
                                       attention_mask=np.asarray(case["attention_mask"]),
                                       images=None if k is None else inputs[k], max_new_tokens=greedy["max_new_tokens"],
                                       eos_token_ids=[], pad_token_id=case["pad_token_id"])))
    return out


def _prefix(a: np.ndarray, b: np.ndarray) -> float:
    """Share of `a` (one row of new tokens) before its first difference from `b`."""
    diff = np.nonzero(a != b)[0]
    return (diff[0] if diff.size else len(a)) / len(a)


def _margin(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit per position, over the logits' standard deviation there (how far
    a perturbation must move the logits to change the argmax)."""
    top = np.sort(logits, axis=-1)
    return (top[..., -1] - top[..., -2]) / logits.std(axis=-1)


def fixture_figures(names, group: int, sink: list, cases: int = 1000) -> None:
    for name in names:
        meta, inputs, greedy, (model, params) = _fixture(name)
        check = meta["checks"][0]
        args = [inputs[check["input_ids"]], inputs[check["attention_mask"]],
                inputs[check["images"]] if check.get("images") else None]
        forward = jax.jit(lambda m, p, *a: m.apply({"params": p}, *a), static_argnums=0)
        ref = forward(model, params, *args)
        valid = np.asarray(ref.attention_mask, bool)
        f = np.asarray(ref.logits)[valid]
        want = greedy_tokens(model, params, greedy, inputs, cases) if greedy else []
        for mode in quantization.MODES:
            qc = quantization.QuantizeConfig(mode, group_size=group)
            qmodel = quantization.quantize_model(model, qc)
            qparams = quantization.quantize_params(params, abstract_params(qmodel))
            q = np.asarray(forward(qmodel, qparams, *args).logits)[valid]
            got = greedy_tokens(qmodel, qparams, greedy, inputs, cases) if greedy else []
            same = [float((a == b).mean()) for a, b in zip(got, want)]
            prefix = [float(np.mean([_prefix(x, y) for x, y in zip(a, b)])) for a, b in zip(got, want)]
            emit({"kind": "fixture", "fixture": name, "mode": mode, "group_size": group,
                  "logits_rel_error": significant(np.linalg.norm(q - f) / np.linalg.norm(f), 4),
                  "top1_agreement": significant((q.argmax(-1) == f.argmax(-1)).mean(), 4),
                  "greedy_token_agreement": significant(np.mean(same), 4) if same else None,
                  "greedy_prefix_share": significant(np.mean(prefix), 4) if prefix else None,
                  "greedy_cases_identical": f"{sum(s == 1.0 for s in same)}/{len(same)}",
                  "float32_top2_margin_median": significant(np.median(_margin(f)), 4),
                  "positions": int(valid.sum())}, sink)


def demo_figures(demo_dir: str | None, work: str, sink: list) -> None:
    from demo import report
    from llava_mini_jax.chat import ChatSession
    if demo_dir is None:
        from demo import run_demo
        demo_dir = os.path.join(work, "demo_out")
        t0 = time.time()
        run_demo(demo_dir, baseline=False, progress=False)
        emit({"kind": "demo_trained", "dir": demo_dir, "seconds": round(time.time() - t0, 1)}, sink)
    hf_dir = os.path.join(demo_dir, "hf", "mini")
    test = report.load_test(os.path.join(demo_dir, "data", "test.json"))
    image_folder = os.path.join(demo_dir, "data", "images")
    base = None
    for mode in (None,) + quantization.MODES:
        session = ChatSession(hf_dir, max_new_tokens=4, quantize=mode)
        acc = report.accuracy(session, test, image_folder, progress=False)
        base = acc["overall"] if mode is None else base
        emit({"kind": "demo", "mode": mode or "float32", "accuracy": {k: round(v, 4) for k, v in acc.items()},
              "points_vs_float32": None if mode is None else round(100 * (acc["overall"] - base), 2),
              "questions": len(test), "param_bytes": quantization.param_bytes(session.params)}, sink)


def decode_figures(llm: str, steps: int, repeats: int, sink: list) -> None:
    """Decode tokens/s at batch 1 (text prompt of 64 tokens, cache of 64 + steps slots)."""
    from llava_mini_jax.generate import init_kv_cache
    cfg = model_config(llm, "mini")
    model = LlavaMini(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    bf16 = random_params_on_device(model)
    prompt = 64
    ids = jnp.asarray(np.random.default_rng(0).integers(3, cfg.llm.vocab_size, (1, prompt)), jnp.int32)
    base = None
    for mode in (None,) + quantization.MODES:
        m = model if mode is None else quantization.quantize_model(model, mode)
        p = bf16 if mode is None else quantization.quantize_params(bf16, abstract_params(m))

        def prefill(p, ids, m=m):
            embeds, mask, _ = m.apply({"params": p}, ids, None, None, method="splice_inputs")
            cache = init_kv_cache(cfg, 1, prompt + steps, jnp.bfloat16)
            logits, cache = m.apply({"params": p}, embeds, mask, cache, method="prefill")
            return jnp.argmax(logits, -1).astype(jnp.int32), cache

        def step(p, token, index, cache, m=m):
            logits, cache = m.apply({"params": p}, token, index, cache, method="decode_step")
            return jnp.argmax(logits, -1).astype(jnp.int32), cache
        prefill_j, step_j = jax.jit(prefill), jax.jit(step, donate_argnums=(3,))
        times = []
        for r in range(repeats + 1):
            token, cache = jax.block_until_ready(prefill_j(p, ids))
            begin = time.perf_counter()
            for t in range(steps):
                token, cache = step_j(p, token, jnp.full((1,), prompt + t, jnp.int32), cache)
            token.block_until_ready()
            if r:
                times.append(time.perf_counter() - begin)
        rate = steps / float(np.median(times))
        base = rate if mode is None else base
        emit({"kind": "decode", "llm": llm, "mode": mode or "bf16", "batch": 1, "steps": steps,
              "tokens_per_s": significant(rate), "vs_bf16": significant(rate / base, 4),
              "param_bytes": quantization.param_bytes(p), "device": jax.devices()[0].device_kind}, sink)
        if mode is not None:
            del p


def main(argv=None) -> int:
    import sys
    command = "python -m benchmarks.quantization " + " ".join(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true",
                    help="tiny model memory + the std fixture, one greedy case (seconds)")
    ap.add_argument("--decode", action="store_true", help="only the GPU decode figure (bf16 / int8 / int4)")
    ap.add_argument("--demo-dir", default=None, help="a `llava-mini-jax demo` output to reuse (default: train one)")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo's toy model")
    ap.add_argument("--work", default="/tmp/llava_mini_quantization", help="where the toy model is trained")
    ap.add_argument("--decode-steps", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.decode and not args.tiny and jax.default_backend() == "cpu":
        ap.error("the 8B decode figure (--decode) needs a GPU (use --decode --tiny on CPU)")
    if args.decode_steps < 1:
        ap.error(f"--decode-steps must be >= 1, got {args.decode_steps}")
    sink: list = []
    name = "quantization_decode" if args.decode else "quantization"
    out = args.out or default_out(name, args.tiny)
    if args.decode:
        decode_figures("tiny" if args.tiny else "llama-3.1-8b", 8 if args.tiny else args.decode_steps,
                       1 if args.tiny else 5, sink)
    else:
        memory_figures("tiny" if args.tiny else "llama-3.1-8b", sink)
        fixture_figures(MODEL_FIXTURES[:1] if args.tiny else MODEL_FIXTURES, 16, sink, cases=1 if args.tiny else 1000)
        if not (args.tiny or args.no_demo):
            demo_figures(args.demo_dir, args.work, sink)
    write_results(out, name, {"command": command.strip(), "tiny": args.tiny, "decode_steps": args.decode_steps,
                              "demo_dir": args.demo_dir}, sink)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
