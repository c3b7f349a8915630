"""HF PyTorch LLaVA-Mini / LLaVA-v1.5 checkpoint -> our JAX checkpoint directory, streaming.

    python -m convert.hf_to_jax --src HF_DIR --out OUT_DIR [--dtype float32|bfloat16|float16]
        [--overwrite] [--allow-pickle] [--vision-tower CLIP_DIR] [--no-scan-layers]

Reads one tensor at a time (safetensors, single or sharded; `.bin` with `--allow-pickle`) and
writes it straight into its orbax array (one layer slice of a stacked array at a time), so peak
memory is a few tensors plus at most 256 MB of memory-mapped input, whatever the model size.
OUT_DIR gets `params/` (orbax), `config.json` (the source's plus `vision_config`) and the source's tokenizer, processor and
generation files; it stands alone (no CLIP directory needed). Vision weights missing from the
source are read from the tower directory. Output is built in a temporary sibling and renamed:
never partial. Layout: see `llava_mini_jax.jax_checkpoint`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional

from llava_mini_jax.hf_weights import CLIP_PREFIX
from llava_mini_jax.jax_checkpoint import PARAMS_DIR

from .checkpoint_config import check_model_type, model_config, read_config, resolve_vision
from .command import run
from .dtypes import DTYPES, parse_dtype
from .layout import check_source, expected_tensors, leaf_shapes
from .params_sink import write_params
from .side_files import copy_side_files
from .sources import TensorSource, open_weights
from .staging import check_output, staged_output

log = logging.getLogger(__name__)

TOWER_PREFIX = "model.vision_tower.vision_tower."


def jax_config(config: dict, vision_dict: dict, dtype_name: Optional[str]) -> dict:
    """The JAX directory's `config.json`: every source key, plus `vision_config`."""
    out = dict(config)
    out["vision_config"] = vision_dict
    if dtype_name is not None:
        out["torch_dtype"] = dtype_name
    return out


def gather_source(src: str, expected: dict, tower_dir: Optional[str], allow_pickle: bool) -> TensorSource:
    """The source's tensors, plus the CLIP tower's for vision tensors the source lacks."""
    source = TensorSource()
    source.add(open_weights(src, allow_pickle))
    missing = {n for n in expected if n not in source}
    if missing and tower_dir is not None and all(n.startswith(CLIP_PREFIX) for n in missing):
        log.info("%s has no vision tower weights; reading them from %s", src, tower_dir)
        source.add(open_weights(tower_dir, allow_pickle),
                   rename=lambda k: TOWER_PREFIX + k if TOWER_PREFIX + k in missing else None)
    return source


def convert_hf_to_jax(src: str, out: str, dtype: Optional[str] = None, overwrite: bool = False,
                      allow_pickle: bool = False, vision_tower: Optional[str] = None,
                      scan_layers: bool = True) -> str:
    """Converts HF directory `src` into JAX directory `out` (see the module doc). Returns `out`."""
    src = os.path.abspath(os.fspath(src))
    out = check_output(out, overwrite, sources=[src, vision_tower])
    config = read_config(src)
    check_model_type(config, src)
    vision, vision_dict, tower_dir = resolve_vision(config, src, vision_tower)
    cfg = model_config(config, vision)
    shapes = leaf_shapes(cfg, scan_layers)
    expected = expected_tensors(cfg, shapes, scan_layers)
    source = gather_source(src, expected, tower_dir, allow_pickle)
    try:
        check_source(source, expected, src)
        with staged_output(out, overwrite) as tmp:
            write_params(os.path.join(tmp, PARAMS_DIR), source, expected, shapes, parse_dtype(dtype),
                         desc=f"{os.path.basename(src)} -> params")
            with open(os.path.join(tmp, "config.json"), "w") as f:
                f.write(json.dumps(jax_config(config, vision_dict, dtype), indent=2, sort_keys=True) + "\n")
            copy_side_files([src] + ([tower_dir] if tower_dir else []), tmp, only=("preprocessor_config.json",))
    finally:
        source.close()
    log.info("wrote %s", out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.hf_to_jax", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="HF LLaVA-Mini (or LLaVA-v1.5) checkpoint directory")
    ap.add_argument("--out", required=True, help="output JAX checkpoint directory")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="cast every tensor (default: keep the source's dtypes)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--allow-pickle", action="store_true", help="read PyTorch .bin weights (torch.load weights_only)")
    ap.add_argument("--vision-tower", help="local CLIP directory (when mm_vision_tower is a hub id and the source "
                                           "lacks vision weights)")
    ap.add_argument("--no-scan-layers", action="store_true", help="store layers_{i} leaves instead of stacked ones")
    args = ap.parse_args(argv)

    def work():
        convert_hf_to_jax(args.src, args.out, args.dtype, args.overwrite, args.allow_pickle, args.vision_tower,
                          scan_layers=not args.no_scan_layers)
    return run(work)


if __name__ == "__main__":
    sys.exit(main())
