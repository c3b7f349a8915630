"""A toy checkpoint in a minute or two, for notebooks and examples that must run offline.

`toy_checkpoint(directory)` draws a small shape-question set (`dataset.write_dataset`), trains the
demo's tiny LLaVA-Mini on it from scratch with the `train/` loop (stage-2 recipe, `vicuna_v1`,
LLaVA json read by the grain pipeline, orbax checkpoint) and exports it with `convert.jax_to_hf`:
an HF-layout checkpoint (config.json, model.safetensors, tokenizer) that loads with
`load_pretrained`, `ChatSession` and `llava-mini-jax chat` like a real one. A few hundred steps
learn colours and positions; the answers are those of a toy. (`llava-mini-jax demo` runs the whole
recipe: both stages, the LLaVA-v1.5-mode comparison, the evaluation.)
"""
from __future__ import annotations

import os
import shutil
import tempfile

from . import dataset, pipeline, shapes
from .tokenizer import train_tokenizer


def toy_checkpoint(directory: str, steps: int = 300, mode: str = "mini", seed: int = 0, batch: int = 32,
                   train_images: int = 1000) -> str:
    """Trains the toy model for `steps` steps of `batch` questions about `train_images` drawn
    images and writes it to `directory` (working files in a temporary directory beside it)."""
    from llava_mini_jax.tokenizer import load_tokenizer
    directory = os.path.abspath(directory)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".toy_work_", dir=os.path.dirname(directory))
    try:
        data = dataset.write_dataset(os.path.join(work, "data"), train_images, 0, pipeline.IMAGE_SIZE, seed,
                                     progress=False)
        tok_dir = train_tokenizer(os.path.join(work, "tokenizer"), shapes.corpus() + list(data.captions[:300]))
        config = pipeline.write_model_config(os.path.join(work, "config.json"),
                                             pipeline.tiny_config(load_tokenizer(tok_dir).vocab_size, mode))
        run = pipeline.run_stage("stage2", pipeline.stage_overrides(
            config_json=config, mode=mode, data_path=data.stage2_json, source="json", tokenizer=tok_dir,
            template="vicuna_v1", run_dir=os.path.join(work, "run"), steps=steps, seed=seed, lr=3e-3, groups=2,
            batch=batch, progress=False) + [f"data.image_folder={data.image_folder}"])
        pipeline.export_hf(run.last_checkpoint, directory, tok_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return directory
