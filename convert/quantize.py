"""A checkpoint (HF or JAX) -> a quantized JAX checkpoint, which loads quantized without ever holding
the float model.

    python -m convert.quantize --src DIR --out OUT_DIR --mode int8|int4 [--group-size 128] [--vision]
        [--no-head] [--dtype bfloat16] [--no-scan-layers] [--overwrite]

The source is loaded through `load_pretrained(..., quantize=...)` (float leaf by leaf into int8 /
int4 on the default device, each float leaf freed once quantized), then written leaf by leaf (a
stacked leaf one layer at a time) into OUT_DIR:

    config.json         the source's, plus `vision_config` (as `convert.hf_to_jax` writes it)
    quantization.json   the `QuantizeConfig` (mode, group_size, head, vision)
    params/             orbax params in our layout (`llava_mini_jax.jax_checkpoint`): every float leaf
                        as in a JAX checkpoint; a quantized kernel as `<path>.qvalue` (int8) or
                        `<path>.qvalue_packed` (int4, two values per byte: `quantize.pack_int4`) and
                        `<path>.scale`
    tokenizer / processor / generation files of the source

`load_pretrained(OUT_DIR)` then restores the quantized arrays straight into their devices
(`quantize.restore_quantized`): an 8B model's int4 weights (5.2 GB) load without the 16 GB bf16
copy. Output is built in a temporary sibling and renamed: never partial.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional

import jax
import numpy as np
from flax import traverse_util

from llava_mini_jax.jax_checkpoint import PARAMS_DIR, ParamsWriter
from llava_mini_jax.loading import load_pretrained
from llava_mini_jax.quantize import (QUANTIZATION_FILE, MODES, QuantizeConfig, is_quantized_leaf, pack_int4,
                                     stored_leaf)

from .checkpoint_config import read_config, resolve_vision
from .command import run
from .dtypes import DTYPES, parse_dtype
from .hf_to_jax import jax_config
from .side_files import copy_side_files
from .staging import check_output, staged_output

log = logging.getLogger(__name__)


def write_quantized_params(directory: str, params: dict) -> None:
    """Writes (dict-form) quantized params as an orbax params checkpoint, one leaf (one layer of a
    stacked leaf) on the host at a time; int4 `qvalue`s packed on the device first."""
    flat = traverse_util.flatten_dict(params)
    stored = {p: stored_leaf(p, tuple(x.shape), x.dtype) for p, x in flat.items()}
    writer = ParamsWriter(directory, {sp: (shape, dtype, "layers" in sp) for sp, shape, dtype in stored.values()})
    try:
        pack = jax.jit(pack_int4)
        for p, x in flat.items():
            sp, _, dtype = stored[p]
            if sp[-1] == "qvalue_packed":
                x = pack(x)
            if "layers" in sp:
                for i in range(x.shape[0]):
                    writer.write(sp, np.asarray(x[i]).astype(dtype), layer=i)
            else:
                writer.write(sp, np.asarray(x).astype(dtype))
        writer.finish()
    except BaseException:
        writer.abort()
        raise


def quantize_checkpoint(src: str, out: str, config: QuantizeConfig, dtype: Optional[str] = None,
                        overwrite: bool = False, scan_layers: bool = True) -> str:
    """Quantizes checkpoint directory `src` into `out` (see the module doc). Returns `out`."""
    src = os.path.abspath(os.fspath(src))
    out = check_output(out, overwrite, sources=[src])
    source_config = read_config(src)
    _, vision_dict, tower_dir = resolve_vision(source_config, src, None)
    param_dtype = parse_dtype(dtype) if dtype is not None else np.float32
    _, params = load_pretrained(src, dtype=param_dtype, scan_layers=scan_layers, quantize=config)
    n_quantized = sum(1 for leaf in traverse_util.flatten_dict(params, is_leaf=lambda _, v: is_quantized_leaf(v))
                      .values() if is_quantized_leaf(leaf))
    with staged_output(out, overwrite) as tmp:
        write_quantized_params(os.path.join(tmp, PARAMS_DIR), params)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            f.write(json.dumps(jax_config(source_config, vision_dict, dtype), indent=2, sort_keys=True) + "\n")
        with open(os.path.join(tmp, QUANTIZATION_FILE), "w") as f:
            f.write(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        copy_side_files([src] + ([tower_dir] if tower_dir else []), tmp, only=("preprocessor_config.json",))
    log.info("wrote %s (%d %s kernels)", out, n_quantized, config.mode)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.quantize", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="checkpoint directory (HF LLaVA-Mini / LLaVA-v1.5, or JAX)")
    ap.add_argument("--out", required=True, help="output quantized JAX checkpoint directory")
    ap.add_argument("--mode", required=True, choices=MODES, help="int8: per output channel; int4: groups")
    ap.add_argument("--group-size", type=int, default=128, help="int4 group along the contracted axis (128)")
    ap.add_argument("--vision", action="store_true", help="also quantize CLIP's linear layers")
    ap.add_argument("--no-head", action="store_true", help="keep the LM head and the token embedding in float")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the float leaves and scales (default float32)")
    ap.add_argument("--no-scan-layers", action="store_true", help="store layers_{i} leaves instead of stacked ones")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = ap.parse_args(argv)

    def work():
        config = QuantizeConfig(args.mode, args.group_size, head=not args.no_head, vision=args.vision)
        quantize_checkpoint(args.src, args.out, config, args.dtype, args.overwrite,
                            scan_layers=not args.no_scan_layers)
    return run(work)


if __name__ == "__main__":
    sys.exit(main())
