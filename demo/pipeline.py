"""The demo's training: stage 1 then stage 2 through the `train/` loop (grain + orbax), then export.

A tiny model is trained from scratch: no pretrained LLM or CLIP is available offline, so the LLM
starts random and the frozen vision tower is a random 2-layer ViT read at its first hidden state
(`hs[0]`: patch embedding + position embedding, layer-normed; a random projection of the pixels).
Everything else is the real recipe: stage 1 trains only the projector of a LLaVA-v1.5-mode model
on captions (`plain`), stage 2 trains projector, compressor, pre-fusion and LLM on questions
(`vicuna_v1`); the LLaVA-v1.5-mode comparison runs stage 2 with the same data, steps and seed. The
learning rates are raised (3e-3 instead of 1e-3 / 1e-4 / 1e-5) because nothing is pretrained.
"""
from __future__ import annotations

import os
import shutil

from llava_mini_jax.config import GenerationConfig, LlavaMiniConfig
from llava_mini_jax.tiny import tiny_config as library_tiny_config
from llava_mini_jax.tiny import write_config

IMAGE_SIZE = 32
BATCH = 32
GENERATION = GenerationConfig(eos_token_ids=(2,), pad_token_id=0)  # the demo tokenizer's </s> and <unk>


def tiny_config(vocab_size: int, mode: str, prefusion_layers: int = 1) -> LlavaMiniConfig:
    """CLIP 32 px / patch 4 (64 patches, width 64, 2 layers, read at hs[0]); LLM width 64, 2 layers;
    one pre-fusion layer; C = 1 (one vision token) in LLaVA-Mini mode."""
    return library_tiny_config(mode, vocab_size=vocab_size, hidden_size=64, num_kv_heads=4, max_position_embeddings=512,
                               rms_norm_eps=1e-5, pad_token_id=0, vision_hidden_size=64, image_size=IMAGE_SIZE,
                               prefusion_layers=prefusion_layers, vision_select_layer=0,
                               image_aspect_ratio="pad", max_length=256)


def write_model_config(path: str, cfg: LlavaMiniConfig) -> str:
    """`config.json` of the demo model (with the demo tokenizer's EOS / pad ids) at `path`."""
    return write_config(os.path.dirname(path), cfg, GENERATION, name=os.path.basename(path))


def stage_overrides(*, config_json: str, mode: str, data_path: str, tokenizer: str, template: str, run_dir: str,
                    steps: int, seed: int, lr: float, groups: int, batch: int = BATCH, init_from: str | None = None,
                    progress: bool = True, prefusion_layers: int = 1, source: str = "tfds") -> list[str]:
    """`key=value` overrides of the stage presets for the tiny CPU run (`source`: `tfds` for a
    packed `data_path`, `json` for a LLaVA json file next to its images)."""
    o = [f"model.config_json={config_json}", f"model.mode={mode}", f"model.init_seed={seed}",
         "model.compute_dtype=float32", "model.remat_policy=none",
         f"model.overrides={{prefusion_layers: {prefusion_layers}, compressor_size: 1}}", f"data.source={source}",
         f"data.data_path=[{data_path}]",
         f"data.tokenizer_path={tokenizer}", f"data.template={template}", "data.model_max_length=192",
         "data.group_by_modality_length=false", "data.read_threads=2", f"data.seed={seed}",
         "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "mesh.devices=1",
         f"train.global_batch_size={batch}", f"train.max_steps={steps}", f"train.seed={seed}",
         f"checkpoint.dir={run_dir}", f"checkpoint.every_steps={steps}", "checkpoint.keep=1",
         f"logging.progress_bar={'true' if progress else 'false'}", "logging.level=WARNING"]
    o += [f"optimizer.groups.{i}.lr={lr}" for i in range(groups)]
    if init_from is not None:
        o += [f"model.init_from_checkpoint={init_from}", "model.init_patterns=[mm_projector]"]
    else:
        o += ["model.init_from_checkpoint=null"]
    return o


def run_stage(preset: str, overrides: list[str]):
    """Runs one stage with the `train/` loop; returns its `TrainResult`."""
    from train.config import load_config
    from train.loop import train
    return train(load_config(preset, overrides))


def export_hf(step_dir: str, out_dir: str, tokenizer_dir: str) -> str:
    """`convert.jax_to_hf` of a training step, plus the tokenizer files (the run dir has none)."""
    from convert.jax_to_hf import convert_jax_to_hf
    convert_jax_to_hf(step_dir, out_dir, overwrite=True)
    for name in os.listdir(tokenizer_dir):
        shutil.copy2(os.path.join(tokenizer_dir, name), out_dir)
    return out_dir
