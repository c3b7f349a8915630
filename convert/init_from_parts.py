"""An untrained LLaVA-Mini (or LLaVA-v1.5) from an HF Llama LLM and an HF CLIP, streaming.

    python -m convert.init_from_parts --llm HF_LLAMA_DIR --vision HF_CLIP_DIR --out DIR
        [--projector mm_projector.bin|.safetensors] [--compressor-size 1] [--prefusion-layers 4]
        [--seed 0] [--baseline] [--format hf|jax] [--projector-type mlp2x_gelu]
        [--vision-select-layer -2] [--vision-tower-name NAME] [--resolution-ratio 1]
        [--model-max-length 2048] [--dtype float32|bfloat16|float16] [--max-shard-size 5GB]
        [--overwrite] [--allow-pickle]

The LLM (`LlamaForCausalLM`: `model.*`, `lm_head.weight`) and the CLIP vision tower (a full
`CLIPModel` directory or a `CLIPVisionModel` one: its `vision_model.*`, stored under
`model.vision_tower.vision_tower.*`) are copied bit for bit; the projector comes from
`--projector` (a stage-1 `mm_projector.bin` / safetensors with `model.mm_projector.*` keys) or is
fresh; the compressor and the pre-fusion layers are fresh (`--baseline`, LLaVA-v1.5 for stage-1
training, has neither). Fresh parts follow the reference's training recipe (the table in
`llava_mini_jax.initializers`, which the model's own initialisers use too), in the LLM's dtype
unless `--dtype`.

Output (`--format hf`, the default): an HF LLaVA-Mini directory (safetensors, `config.json` in
the transformers-4.x form the reference reads, `mm_vision_tower` = `--vision-tower-name`, default
the absolute `--vision` path) that the reference and `load_pretrained` both read; `--format jax`:
our JAX directory (see `llava_mini_jax.jax_checkpoint`). The LLM's tokenizer and generation
files and the CLIP's `preprocessor_config.json` are copied. Never partial (temporary directory,
then rename).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional

import numpy as np

from llava_mini_jax.config import ClipVisionConfig, LlavaMiniConfig
from llava_mini_jax.jax_checkpoint import PARAMS_DIR
from llava_mini_jax.initializers import fan_in_of, fresh_tensor, hf_rule
from llava_mini_jax.loading import vision_section

from .checkpoint_config import legacy_llm_config, read_config
from .command import run
from .dtypes import DTYPES, parse_dtype
from .hf_writer import parse_size, write_config, write_hf_weights
from .layout import check_source, expected_tensors, leaf_shapes
from .params_sink import write_params
from .side_files import copy_side_files
from .sources import TensorSource, open_weights
from .staging import check_output, staged_output

log = logging.getLogger(__name__)

TOWER_PREFIX = "model.vision_tower.vision_tower."


def llava_config(llm: dict, vision: ClipVisionConfig, *, baseline: bool, compressor_size: int, prefusion_layers: int,
                 projector_type: str, vision_select_layer: int, vision_tower_name: str, resolution_ratio: int,
                 model_max_length: Optional[int]) -> dict:
    """The reference's `config.json` of the combined model: the LLM's Llama fields plus LLaVA's."""
    d = dict(llm)
    d.update(
        architectures=["LlavaLlamaForCausalLM" if baseline else "LlavaMiniLlamaForCausalLM"],
        model_type="llava_llama" if baseline else "llava_mini_llama",
        freeze_mm_mlp_adapter=False, tune_mm_mlp_adapter=False, use_mm_proj=True,
        image_aspect_ratio="pad", mm_patch_merge_type="flat", mm_use_im_patch_token=False, mm_use_im_start_end=False,
        mm_hidden_size=vision.hidden_size, mm_projector_type=projector_type, mm_vision_select_feature="patch",
        mm_vision_select_layer=vision_select_layer, mm_vision_tower=vision_tower_name,
        tokenizer_model_max_length=model_max_length, tokenizer_padding_side="right",
    )
    if not baseline:
        d.update(compressor_size=compressor_size, prefusion_layer_num=prefusion_layers,
                 resolution_ratio=resolution_ratio)
    return d


def _llm_name(key: str) -> Optional[str]:
    return key


_BARE_VISION = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")


def _clip_name(key: str) -> Optional[str]:
    """CLIP's `vision_model.*` -> the LLaVA name; the text tower and projections are dropped. A
    `CLIPVisionModel` saved by transformers 5 has no `vision_model.` prefix: it is added."""
    if key.startswith("vision_model."):
        return TOWER_PREFIX + key
    return TOWER_PREFIX + "vision_model." + key if key.startswith(_BARE_VISION) else None


def _projector_name(path: str):
    def rename(key: str) -> str:
        if key.startswith("model.mm_projector."):
            return key
        if key.startswith("mm_projector."):
            return "model." + key
        raise ValueError(f"projector file {path} holds {key!r}; expected only model.mm_projector.* tensors")
    return rename


def add_fresh_parts(source: TensorSource, expected: dict, dtype: np.dtype, seed: int) -> list[str]:
    """Registers a fresh initialisation for every expected new-part tensor the inputs lack."""
    shapes = {n: e.shape for n, e in expected.items()}
    added = []
    for name, e in expected.items():
        if name in source or hf_rule(name) is None:
            continue
        fan_in = fan_in_of(name, shapes)
        make = lambda name=name, e=e, fan_in=fan_in: fresh_tensor(name, e.shape, fan_in, seed).astype(dtype)  # noqa: E731
        source.add_generated(name, e.shape, dtype, make)
        added.append(name)
    return added


def init_from_parts(llm: str, vision: str, out: str, projector: Optional[str] = None, compressor_size: int = 1,
                    prefusion_layers: int = 4, seed: int = 0, baseline: bool = False, fmt: str = "hf",
                    projector_type: str = "mlp2x_gelu", vision_select_layer: int = -2,
                    vision_tower_name: Optional[str] = None, resolution_ratio: int = 1,
                    model_max_length: Optional[int] = 2048, dtype: Optional[str] = None, max_shard_size="5GB",
                    overwrite: bool = False, allow_pickle: bool = False) -> str:
    """Builds the model directory `out` (see the module doc). Returns `out`."""
    if fmt not in ("hf", "jax"):
        raise ValueError(f"format {fmt!r}: expected 'hf' or 'jax'")
    llm, vision = os.path.abspath(llm), os.path.abspath(vision)
    out = check_output(out, overwrite, sources=[llm, vision, projector])
    llm_config = legacy_llm_config(read_config(llm))
    if llm_config.get("model_type") != "llama":
        raise ValueError(f"{llm}/config.json: model_type {llm_config.get('model_type')!r}; expected 'llama' "
                         "(an HF LlamaForCausalLM: Vicuna, Llama 3.x)")
    clip_config = read_config(vision)
    if clip_config.get("model_type") not in ("clip", "clip_vision_model"):
        raise ValueError(f"{vision}/config.json: model_type {clip_config.get('model_type')!r}; expected 'clip' "
                         "(CLIPModel) or 'clip_vision_model'")
    vision_dict = vision_section(clip_config)
    vcfg = ClipVisionConfig.from_hf_dict(vision_dict)
    config = llava_config(llm_config, vcfg, baseline=baseline, compressor_size=compressor_size,
                          prefusion_layers=prefusion_layers, projector_type=projector_type,
                          vision_select_layer=vision_select_layer, vision_tower_name=vision_tower_name or vision,
                          resolution_ratio=resolution_ratio, model_max_length=model_max_length)
    cfg = LlavaMiniConfig.from_hf_dict(config, vcfg)
    shapes = leaf_shapes(cfg)
    expected = expected_tensors(cfg, shapes)
    source = TensorSource()
    try:
        source.add(open_weights(llm, allow_pickle), rename=_llm_name)
        source.add(open_weights(vision, allow_pickle), rename=_clip_name)
        if projector is not None:
            source.add(open_weights(projector, allow_pickle), rename=_projector_name(projector))
        if "model.embed_tokens.weight" not in source:
            raise ValueError(f"{llm} has no model.embed_tokens.weight: not a LlamaForCausalLM checkpoint")
        cast = parse_dtype(dtype)
        fresh = add_fresh_parts(source, expected, cast or source.spec("model.embed_tokens.weight")[1], seed)
        log.info("fresh parts: %d tensors (seed %d)", len(fresh), seed)
        check_source(source, expected, f"init_from_parts(--llm {llm}, --vision {vision})")
        if cast is not None:
            config["torch_dtype"] = dtype
        with staged_output(out, overwrite) as tmp:
            if fmt == "hf":
                specs = [(n, e.shape, cast or source.spec(n)[1]) for n, e in expected.items()]
                want = {n: dt for n, _, dt in specs}
                write_hf_weights(tmp, specs, lambda n: source.read(n).astype(want[n], copy=False),
                                 parse_size(max_shard_size), desc="init_from_parts")
                write_config(tmp, config)
            else:
                write_params(os.path.join(tmp, PARAMS_DIR), source, expected, shapes, cast, desc="init_from_parts")
                with open(os.path.join(tmp, "config.json"), "w") as f:
                    f.write(json.dumps({**config, "vision_config": vision_dict}, indent=2, sort_keys=True) + "\n")
            copy_side_files([llm, vision], tmp, only=("preprocessor_config.json",))
    finally:
        source.close()
    log.info("wrote %s", out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.init_from_parts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", required=True, help="HF LlamaForCausalLM directory (Vicuna, Llama 3.x)")
    ap.add_argument("--vision", required=True, help="HF CLIPModel (or CLIPVisionModel) directory")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--projector", help="stage-1 projector weights (mm_projector.bin or .safetensors)")
    ap.add_argument("--compressor-size", type=int, default=1, help="C: C*C vision tokens per image (default 1)")
    ap.add_argument("--prefusion-layers", type=int, default=4, help="pre-fusion layers (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", action="store_true", help="LLaVA-v1.5 (no compressor, no pre-fusion)")
    ap.add_argument("--format", dest="fmt", choices=("hf", "jax"), default="hf", help="output format (default hf)")
    ap.add_argument("--projector-type", default="mlp2x_gelu", help="linear | mlp<k>x_gelu | identity")
    ap.add_argument("--vision-select-layer", type=int, default=-2)
    ap.add_argument("--vision-tower-name", help="mm_vision_tower to record (default: the absolute --vision path), "
                                                "e.g. openai/clip-vit-large-patch14-336")
    ap.add_argument("--resolution-ratio", type=int, default=1)
    ap.add_argument("--model-max-length", type=int, default=2048, help="tokenizer_model_max_length")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="cast every tensor (default: LLM and CLIP keep theirs, "
                                                            "fresh parts take the LLM's)")
    ap.add_argument("--max-shard-size", default="5GB")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--allow-pickle", action="store_true", help="read PyTorch .bin weights (torch.load weights_only)")
    args = ap.parse_args(argv)

    def work():
        init_from_parts(args.llm, args.vision, args.out, args.projector, args.compressor_size, args.prefusion_layers,
                        args.seed, args.baseline, args.fmt, args.projector_type, args.vision_select_layer,
                        args.vision_tower_name, args.resolution_ratio, args.model_max_length, args.dtype,
                        args.max_shard_size, args.overwrite, args.allow_pickle)
    return run(work)


if __name__ == "__main__":
    sys.exit(main())
