"""What the demo measures on the exported-and-reloaded models: held-out accuracy, FLOPs per image
(XLA's cost analysis of the compiled prefill), latency, and the compressor's attention maps."""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from PIL import Image
from tqdm import tqdm

from llava_mini_jax.conversation import build_inference_prompt, tokenizer_image_token
from llava_mini_jax.generate import generate

from .shapes import CHANCE


def load_test(path: str) -> list[dict]:
    with open(path) as f:
        return json.load(f)


def accuracy(session, test: list[dict], image_folder: str, batch: int = 64, progress: bool = True) -> dict:
    """Exact match of the first answer word, per question kind and overall."""
    hits: dict = {}
    for i in tqdm(range(0, len(test), batch), desc=f"answering ({os.path.basename(session.model_dir)})",
                  disable=not progress):
        rows = test[i:i + batch]
        pixels = [session.load_pixels(image=os.path.join(image_folder, r["image"])) for r in rows]
        answers = session.answer_batch([r["question"] for r in rows], pixels, max_new_tokens=4)
        for r, a in zip(rows, answers):
            words = a.strip().rstrip(".").split()
            hits.setdefault(r["kind"], []).append(bool(words) and words[0].lower() == r["answer"])
    out = {k: float(np.mean(v)) for k, v in hits.items()}
    out["overall"] = float(np.mean([x for v in hits.values() for x in v]))
    return out


def chance(test: list[dict]) -> float:
    return float(np.mean([CHANCE[r["kind"]] for r in test]))


def _prompt(session, image_path: str):
    ids = np.asarray([tokenizer_image_token(build_inference_prompt("What shape is it?", session.template,
                                                                    session.tokenizer), session.tokenizer)], np.int32)
    return ids, session.load_pixels(image=image_path)[None]


def prefill_flops(session, image_path: str) -> float:
    """FLOPs of the jitted prefill (vision, compressor, pre-fusion, splice, LLM) for one image and
    the prompt, from XLA's cost analysis of the compiled program (layers unrolled: XLA counts a
    scanned layer body once)."""
    from llava_mini_jax.loading import abstract_params
    from llava_mini_jax.model import LlavaMini
    model = LlavaMini(session.model.config, scan_layers=False)
    ids, pixels = _prompt(session, image_path)
    shapes = nn.unbox(abstract_params(model))

    def fwd(p, ids, pix):
        return model.apply({"params": p}, input_ids=ids, images=pix).logits[:, -1]
    lowered = jax.jit(fwd).lower(shapes, jax.ShapeDtypeStruct(ids.shape, jnp.int32),
                                 jax.ShapeDtypeStruct(pixels.shape, jnp.float32))
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def latency(session, image_path: str, repeats: int = 5) -> dict:
    """Median seconds: time to first token (prefill + 1 token) and per decoded token, batch 1."""
    ids, pixels = _prompt(session, image_path)
    run = lambda n: generate(session.model, session.params, ids, images=pixels, max_new_tokens=n,  # noqa: E731
                             eos_token_ids=[])
    run(1), run(9)  # compile
    first, nine = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        run(1)
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        run(9)
        nine.append(time.perf_counter() - t)
    ttft = float(np.median(first))
    return {"ttft_s": ttft, "decode_s_per_token": max(0.0, (float(np.median(nine)) - ttft) / 8)}


def attention_png(session, test: list[dict], image_folder: str, path: str, count: int = 8, scale: int = 6) -> str:
    """Each test image next to the compressor's attention over its patches (the paper's compression
    figure): where the one vision token looks. Saved as a PNG grid."""
    g = session.model.config.vision.grid
    rows = test[:count]
    pixels = np.stack([session.load_pixels(image=os.path.join(image_folder, r["image"])) for r in rows])
    ids = np.asarray([[1, -200]] * len(rows), np.int32)
    _, state = session.model.apply({"params": session.params}, input_ids=ids, images=pixels,
                                   mutable=["intermediates"])
    attn = np.asarray(state["intermediates"]["compressor"]["compressor_attn"][0])[:, 0]  # [n, K]
    size = session.model.config.vision.image_size * scale
    tiles = []
    for r, a in zip(rows, attn):
        img = Image.open(os.path.join(image_folder, r["image"])).convert("RGB").resize((size, size), Image.NEAREST)
        heat = (a.reshape(g, g) / max(a.max(), 1e-12) * 255).astype(np.uint8)
        heat = Image.fromarray(heat).resize((size, size), Image.NEAREST)
        red = Image.merge("RGB", (heat, Image.new("L", heat.size, 0), Image.new("L", heat.size, 0)))
        tiles.append((img, Image.blend(img, red, 0.6)))
    cols, pad = 4, 4
    rows_n = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * (2 * size + 3 * pad), rows_n * (size + pad)), (255, 255, 255))
    for i, (img, over) in enumerate(tiles):
        x, y = (i % cols) * (2 * size + 3 * pad), (i // cols) * (size + pad)
        sheet.paste(img, (x, y))
        sheet.paste(over, (x + size + pad, y))
    sheet.save(path)
    return path


def real_size_flops(prompt_tokens: int = 64) -> dict:
    """Analytic prefill TFLOPs per image at the paper's size (CLIP-L/336 + Vicuna-7B)."""
    from llava_mini_jax.flops import real_size_config, request_flops
    return {mode: sum(request_flops(real_size_config(mode=mode), 1, prompt_tokens + 1).values()) / 1e12
            for mode in ("mini", "baseline")}


def format_table(rows: list[dict]) -> str:
    """Plain-text table of the comparison rows."""
    head = ["model", "tokens/image", "held-out acc", "colour", "shape", "count", "position", "prefill MFLOPs",
            "TTFT ms", "decode ms/tok"]
    lines = [head]
    for r in rows:
        acc = r.get("accuracy", {})
        fmt = lambda k: "-" if k not in acc else f"{acc[k]:.2f}"  # noqa: E731
        lines.append([r["name"], str(r.get("tokens", "-")), fmt("overall"), fmt("colour"), fmt("shape"), fmt("count"),
                      fmt("position"), "-" if "flops" not in r else f"{r['flops'] / 1e6:.1f}",
                      "-" if "ttft_s" not in r else f"{r['ttft_s'] * 1e3:.1f}",
                      "-" if "decode_s_per_token" not in r else f"{r['decode_s_per_token'] * 1e3:.2f}"])
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    out = ["  ".join(x[i].ljust(widths[i]) for i in range(len(head))) for x in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
