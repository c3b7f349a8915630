"""A toy checkpoint in seconds, for notebooks and examples that must run offline.

`toy_checkpoint(directory)` trains the demo's tiny LLaVA-Mini on freshly drawn shape questions
with a plain optax loop (no TFDS, no orbax: the `demo` command shows the full pipeline) and writes
an HF-layout checkpoint (config.json, model.safetensors, `clip/` tower, tokenizer), so it loads
with `load_pretrained`, `ChatSession` and `llava-mini-jax chat` like a real one. A few hundred steps
learn colours and positions; the answers are those of a toy.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import optax
from safetensors.numpy import save_file

from llava_mini_jax.conversation import tokenize_conversation
from llava_mini_jax.hf_weights import params_to_hf
from llava_mini_jax.image_processing import process_image
from llava_mini_jax.loading import init_params
from llava_mini_jax.model import LlavaMini
from llava_mini_jax.tokenizer import load_tokenizer

from . import pipeline, shapes
from .tokenizer import train_tokenizer


def _batch(rng, tok, processor, size: int, rows: int):
    ids, labels, pixels = [], [], []
    for _ in range(rows):
        scene = shapes.random_scene(rng)
        kinds = shapes.question_kinds(scene)
        kind = kinds[int(rng.integers(len(kinds)))]
        s = tokenize_conversation([{"from": "human", "value": "<image>\n" + shapes.QUESTIONS[kind]},
                                   {"from": "gpt", "value": scene.answer(kind)}], tok, "vicuna_v1", True)
        ids.append(s.input_ids)
        labels.append(s.labels)
        pixels.append(process_image(shapes.draw(scene, rng, size), "pad", 1, processor))
    width = max(len(x) for x in ids)
    out = np.zeros((rows, width), np.int32), np.zeros((rows, width), np.int32), np.full((rows, width), -100, np.int32)
    for r, (i, lab) in enumerate(zip(ids, labels)):
        out[0][r, :len(i)], out[1][r, :len(i)], out[2][r, :len(i)] = i, 1, lab
    return {"input_ids": out[0], "attention_mask": out[1], "labels": out[2], "images": np.stack(pixels)}


def write_hf_checkpoint(directory: str, model: LlavaMini, params, tokenizer_dir: str) -> str:
    """An HF-layout directory for `params` (small models: one `model.safetensors`)."""
    os.makedirs(os.path.join(directory, "clip"), exist_ok=True)
    cfg = model.config
    hf = cfg.to_hf_dict()
    vision = hf.pop("vision_config")
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    tensors = {k: np.ascontiguousarray(v) for k, v in params_to_hf(jax.tree.map(np.asarray, params), cfg)}
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    prefix = "model.vision_tower.vision_tower."
    save_file({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
              os.path.join(directory, "clip", "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "clip", "config.json"), "w") as f:
        json.dump(vision, f, indent=2)
    for name in os.listdir(tokenizer_dir):
        with open(os.path.join(tokenizer_dir, name), "rb") as src, open(os.path.join(directory, name), "wb") as dst:
            dst.write(src.read())
    return directory


def toy_checkpoint(directory: str, steps: int = 300, mode: str = "mini", seed: int = 0, batch: int = 32) -> str:
    """Trains the toy model (about 0.05 s per step on a laptop CPU) and writes it to `directory`."""
    rng = np.random.default_rng(seed)
    tok_dir = train_tokenizer(os.path.join(directory, "_tokenizer"),
                              shapes.corpus() + [shapes.random_scene(rng).caption() for _ in range(300)])
    tok = load_tokenizer(tok_dir)
    model = LlavaMini(pipeline.tiny_config(tok.vocab_size, mode))
    from llava_mini_jax.chat import processor_config
    processor = processor_config(directory, pipeline.IMAGE_SIZE)
    params = init_params(model, jax.random.key(seed))
    trainable = jax.tree_util.tree_map_with_path(
        lambda p, _: p[0].key != "vision_tower" and getattr(p[-1], "key", "") != "pos_embed", params)
    tx = optax.multi_transform({True: optax.adamw(optax.warmup_cosine_decay_schedule(0, 3e-3, max(1, steps // 30),
                                                                                       steps, 0.0), weight_decay=0.0),
                                False: optax.set_to_zero()}, trainable)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, b):
        loss, grads = jax.value_and_grad(lambda p: model.apply({"params": p}, **b).loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state, _batch(rng, tok, processor, pipeline.IMAGE_SIZE, batch))
    return write_hf_checkpoint(directory, model, params, tok_dir)
