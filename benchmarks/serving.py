"""Serving: the continuous-batching engine against `generate` one batch at a time, in one run.

The workload: `requests` image chats per concurrency level (one image, a text prompt of random
length, an answer of random length from `answer_tokens`; greedy; no EOS, so every answer has its
drawn length), random weights at the real size (Llama-3.1-8B + CLIP-L/336, bf16, LLaVA-Mini: one
vision token per image). At each concurrency c, c clients each send their next request as soon as
the last one is answered (closed loop):

- `engine`: `llava_mini_jax.engine.Engine` with c KV-cache slots (what `llava-mini-jax serve` runs
  under HTTP: requests join and leave the batch between decode steps);
- `generate`: the requests in arrival order, c at a time, through `generate` (static batching: a
  batch starts when the previous one has finished and runs until its longest answer).

Figures per system and c: `requests_per_s`, `generated_tokens_per_s` (answer tokens only, not the
padding a static batch decodes), `ttft_p50_ms` / `ttft_p99_ms` (request sent -> its first token).
Then `speedup` (engine over generate) per c, and `capacity`: how many concurrent image chats fit in
one accelerator's memory (analytic from the KV-cache arithmetic at the real size, any machine;
measured by allocating and stepping engines of growing size on a GPU).

This is the engine without HTTP, JSON and image decoding (the server adds those per request).

    python -m benchmarks.serving                # GPU; benchmarks/results/serve.json
    python -m benchmarks.serving --tiny         # CPU, seconds (the test suite)
    python -m benchmarks.serving --capacity-only# any CPU: the analytic capacity figure
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import pathlib
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (GIB, STANDARD, TINY_STANDARD, abstract_param_tree, default_out, emit,
                    is_out_of_memory, model_config, param_bytes, random_params_on_device, significant,
                    write_results)
from llava_mini_jax.config import IMAGE_TOKEN_INDEX
from llava_mini_jax.engine import Engine, Request, SamplingParams
from llava_mini_jax.generate import bucket_length, generate
from llava_mini_jax.model import LlavaMini

H100_GIB = 80.0  # an H100 SXM's HBM3


@dataclasses.dataclass(frozen=True)
class Setting:
    llm: str
    dtype: str
    concurrency: tuple[int, ...]
    requests_per_client: int  # requests per concurrency level: max(min_requests, this * c)
    min_requests: int
    prompt_tokens: tuple[int, int]  # text tokens, inclusive range (one prompt bucket)
    answer_tokens: tuple[int, ...]
    max_context: int
    chat_tokens: int = 320  # text of one image chat in the capacity figure: a 64-token prompt, a 256-token answer
    seed: int = 0
    tiny: bool = False


FULL = Setting(llm="llama-3.1-8b", dtype="bfloat16", concurrency=(1, 8, 32, 128), requests_per_client=4,
               min_requests=16, prompt_tokens=(33, 62), answer_tokens=(16, 32, 64, 128), max_context=256)
TINY = Setting(llm="tiny", dtype="float32", concurrency=(3,), requests_per_client=2, min_requests=6,
               prompt_tokens=(17, 30), answer_tokens=(2, 4), max_context=64, tiny=True)


def workload(cfg, s: Setting, n: int, seed: int) -> list[Request]:
    """`n` image chats: BOS, the placeholder, random text; random pixels; answer lengths drawn."""
    rng = np.random.default_rng(seed)
    v = cfg.vision
    out = []
    for _ in range(n):
        length = int(rng.integers(s.prompt_tokens[0], s.prompt_tokens[1] + 1))
        ids = rng.integers(3, cfg.llm.vocab_size, size=length + 1).astype(np.int32)
        ids[0], ids[1] = 1, IMAGE_TOKEN_INDEX
        pixels = rng.standard_normal((1, v.num_channels, v.image_size, v.image_size)).astype(np.float32)
        answer = int(rng.choice(s.answer_tokens))
        out.append(Request(ids, pixels, SamplingParams(max_tokens=answer, eos_token_ids=())))
    return out


def summary(system: str, c: int, wall: float, ttft: list[float], tokens: int, slots: int) -> dict:
    t = np.asarray(ttft) * 1e3
    return {"benchmark": "serve", "figure": system, "concurrency": c, "slots": slots, "requests": len(ttft),
            "wall_s": significant(wall), "requests_per_s": significant(len(ttft) / wall),
            "generated_tokens": tokens, "generated_tokens_per_s": significant(tokens / wall),
            "ttft_p50_ms": significant(np.percentile(t, 50)), "ttft_p99_ms": significant(np.percentile(t, 99))}


def run_engine(model, params, requests: list[Request], c: int, s: Setting) -> dict:
    engine = Engine(model, params, max_batch=c, max_context=s.max_context, max_queue=len(requests))
    width = bucket_length(len(requests[0].input_ids))
    engine.warmup([requests[0].pixels.shape], buckets=[width])
    todo = iter(requests)
    lock = threading.Lock()
    ttft, tokens = [], []

    def client():
        while True:
            with lock:
                r = next(todo, None)
            if r is None:
                return
            start = time.perf_counter()
            first, n = None, 0
            for event in engine.submit(r).events(timeout=600):
                if event.tokens and first is None:
                    first = time.perf_counter() - start
                n += len(event.tokens)
            with lock:
                ttft.append(first)
                tokens.append(n)

    with engine:
        threads = [threading.Thread(target=client) for _ in range(c)]
        begin = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - begin
    assert sum(tokens) == sum(r.sampling.max_tokens for r in requests)
    return summary("engine", c, wall, ttft, sum(tokens), c)


def _batch_inputs(batch: list[Request]):
    width = max(len(r.input_ids) for r in batch)
    ids = np.zeros((len(batch), width), np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(batch):
        ids[i, :len(r.input_ids)], mask[i, :len(r.input_ids)] = r.input_ids, 1
    return ids, mask, np.stack([r.pixels for r in batch])


def run_generate(model, params, requests: list[Request], c: int) -> dict:
    batches = [requests[i:i + c] for i in range(0, len(requests), c)]
    answer = [max(r.sampling.max_tokens for r in b) for b in batches]
    seen = set()
    for b, m in zip(batches, answer):  # compile every (batch size, answer length) before timing
        if (len(b), m) not in seen:
            seen.add((len(b), m))
            ids, mask, images = _batch_inputs(b)
            generate(model, params, ids, mask, images, max_new_tokens=m, eos_token_ids=())
    ttft = []
    begin = time.perf_counter()
    for b, m in zip(batches, answer):
        ids, mask, images = _batch_inputs(b)
        start = time.perf_counter()
        first = []
        generate(model, params, ids, mask, images, max_new_tokens=m, eos_token_ids=(),
                 stream=lambda tokens: first.append(time.perf_counter()) if not first else None)
        ttft += [first[0] - start] * len(b)  # the whole batch arrived when the previous one finished
    wall = time.perf_counter() - begin
    return summary("generate", c, wall, ttft, sum(r.sampling.max_tokens for r in requests), c)


# -- capacity ----------------------------------------------------------------------------------------------
def kv_bytes_per_token(cfg, itemsize: int) -> int:
    c = cfg.llm
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * itemsize


def capacity_analytic(s: Setting, memory_gib: float = H100_GIB) -> list[dict]:
    """Image chats (one image + `chat_tokens` of text) whose KV cache fits next to the weights in
    `memory_gib`, LLaVA-Mini and LLaVA-v1.5 at the real size (nothing is allocated): `ideal` with
    caches of exactly a chat's size, `engine` with this engine's fixed slots of `context` tokens."""
    llm = "llama-3.1-8b" if s.tiny else s.llm
    out = []
    for mode in ("mini", "baseline"):
        cfg = model_config(llm, mode, STANDARD)
        itemsize = jnp.dtype(jnp.bfloat16).itemsize
        weights = param_bytes(abstract_param_tree(LlavaMini(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)))
        per_token = kv_bytes_per_token(cfg, itemsize)
        vision = cfg.tokens_per_frame
        chat = vision + s.chat_tokens
        context = bucket_length(chat)
        free = memory_gib * GIB - weights - 2 * GIB  # 2 GiB for activations and the runtime
        out.append({"benchmark": "serve", "figure": "capacity", "method": "analytic", "llm": llm, "mode": mode,
                    "dtype": "bfloat16", "memory_gib": memory_gib, "weights_gib": significant(weights / GIB, 4),
                    "kv_bytes_per_token": per_token, "vision_tokens_per_image": vision,
                    "kv_mib_per_image": significant(vision * per_token / 2 ** 20, 4),
                    "chat_tokens": chat, "kv_mib_per_chat": significant(chat * per_token / 2 ** 20, 4),
                    "chats_that_fit_ideal": int(free // (chat * per_token)), "engine_context": context,
                    "chats_that_fit_engine": int(free // (context * per_token))})
    return out


def capacity_measured(model, params, s: Setting) -> dict:
    """Slots of `bucket_length(1 + chat_tokens)` tokens an engine can allocate and step before the
    device runs out of memory (GPU only): doubling, then bisection to within 1/32."""
    context = bucket_length(1 + s.chat_tokens)
    size = model.config.vision.image_size

    def fits(n: int) -> bool:
        try:
            engine = Engine(model, params, max_batch=n, max_context=context)
            engine.warmup([(1, 3, size, size)], buckets=[64])
            del engine
            return True
        except Exception as e:  # noqa: BLE001
            if not is_out_of_memory(e):
                raise
            return False
        finally:
            gc.collect()

    good, n = 0, 64
    while fits(n):
        good, n = n, n * 2
    bad = n
    while bad - good > max(1, good // 32):
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return {"benchmark": "serve", "figure": "capacity", "method": "measured", "llm": s.llm, "mode": "mini",
            "dtype": s.dtype, "engine_context": context, "chats_that_fit_engine": good,
            "device_kind": jax.devices()[0].device_kind}


def run(s: Setting) -> list[dict]:
    results: list[dict] = []
    emit({"benchmark": "serve", "figure": "workload", "llm": s.llm, "dtype": s.dtype,
          "prompt_tokens": list(s.prompt_tokens), "answer_tokens": list(s.answer_tokens), "max_context": s.max_context,
          "vision_tokens_per_request": 1, "decoding": "greedy, no EOS"}, results)
    cfg = model_config(s.llm, "mini", TINY_STANDARD if s.tiny else STANDARD)
    dtype = jnp.dtype(s.dtype)
    model = LlavaMini(cfg, dtype=dtype, param_dtype=dtype)
    params = random_params_on_device(model, s.seed)
    for c in s.concurrency:
        requests = workload(cfg, s, max(s.min_requests, s.requests_per_client * c), s.seed + c)
        eng = emit(run_engine(model, params, requests, c, s), results)
        gen = emit(run_generate(model, params, requests, c), results)
        emit({"benchmark": "serve", "figure": "speedup", "concurrency": c,
              "requests_per_s": significant(eng["requests_per_s"] / gen["requests_per_s"], 4),
              "generated_tokens_per_s": significant(eng["generated_tokens_per_s"] / gen["generated_tokens_per_s"], 4),
              "ttft_p50": significant(gen["ttft_p50_ms"] / eng["ttft_p50_ms"], 4)}, results)
        jax.clear_caches()
    for f in capacity_analytic(s):
        emit(f, results)
    if jax.default_backend() == "gpu":
        emit(capacity_measured(model, params, s), results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU; seconds")
    parser.add_argument("--llm", choices=("vicuna-7b", "llama-3.1-8b"), default=None)
    parser.add_argument("--concurrency", default=None, help="comma list (default 1,8,32,128)")
    parser.add_argument("--capacity-only", action="store_true", help="only the analytic capacity figure (any CPU)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/serve.json; none with "
                                                    "--tiny)")
    args = parser.parse_args(argv)
    s = TINY if args.tiny else FULL
    if args.llm and not args.tiny:
        s = dataclasses.replace(s, llm=args.llm)
    if args.concurrency:
        levels = tuple(int(x) for x in args.concurrency.split(",") if x)
        if not levels or min(levels) < 1:
            parser.error("--concurrency: expected a comma list of positive integers")
        s = dataclasses.replace(s, concurrency=levels)
    if args.capacity_only:
        results = [emit(f) for f in capacity_analytic(s)]
        write_results(args.out or default_out("serve_capacity_analytic", False), "serve", dataclasses.asdict(s),
                      results)
        return 0
    if not args.tiny and jax.default_backend() == "cpu":
        parser.error("the real-size serving run needs a GPU (use --tiny, or --capacity-only, on CPU)")
    write_results(args.out or default_out("serve", args.tiny), "serve", dataclasses.asdict(s), run(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
