"""Our JAX checkpoint directory -> HF PyTorch LLaVA-Mini checkpoint, streaming.

    python -m convert.jax_to_hf --src JAX_DIR --out HF_DIR [--dtype float16|bfloat16|float32]
        [--max-shard-size 5GB] [--overwrite]

Writes sharded safetensors (`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`,
or one `model.safetensors` when everything fits one shard) with the reference's tensor names and
layouts, reading one tensor (one layer slice of a stacked array) at a time, plus `config.json`
(the JAX directory's, minus `vision_config`: the transformers-4.x config the reference reads;
`torch_dtype` follows `--dtype` when given) and the tokenizer / processor / generation files.
When `mm_vision_tower` is a relative directory name (e.g. `"clip"`), that directory is written
too (an HF `CLIPVisionModel` from the checkpoint's own vision tensors), so the export stands
alone for the reference (which reloads CLIP from there) and for `load_pretrained`.
Default dtype: each tensor's stored dtype. JAX_DIR may also be an orbax params checkpoint saved
by training (`params/` in orbax's OCDBT layout) next to a `config.json`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

import numpy as np

from llava_mini_jax.config import BUILTIN_VISION_CONFIGS
from llava_mini_jax.jax_checkpoint import PARAMS_DIR, HFView, ParamsReader, leaf_name

from .checkpoint_config import check_model_type, model_config, read_config, resolve_vision
from .command import run
from .dtypes import DTYPES, parse_dtype
from .fast_layout import for_to_hf
from .hf_writer import parse_size, write_config, write_hf_weights
from .layout import hf_order, hf_shape, leaf_shapes
from .side_files import copy_side_files
from .staging import check_output, staged_output

log = logging.getLogger(__name__)


def hf_config(config: dict, dtype_name: Optional[str]) -> dict:
    """The reference's `config.json`: the JAX one without `vision_config`."""
    out = {k: v for k, v in config.items() if k != "vision_config"}
    if dtype_name is not None:
        out["torch_dtype"] = dtype_name
    return out


def check_stored_shapes(reader: ParamsReader, expected: dict, where: str) -> dict:
    """`{leaf: (shape, dtype)}` of the stored params; ValueError listing leaves whose shape
    disagrees with config.json."""
    stored = {p: reader.shape_dtype(p) for p in reader.paths}
    bad = [f"{leaf_name(p)}: {stored[p][0]} (config.json gives {s})" for p, s in expected.items()
           if p in stored and stored[p][0] != s]
    if bad:
        raise ValueError(f"{where}: {len(bad)} params whose shape disagrees with config.json: {bad[:20]}")
    return stored


def tensor_specs(view: HFView, stored: dict, dtype: Optional[np.dtype]) -> list:
    """`(hf_name, shape, dtype)` of every tensor, in the reference's order."""
    shapes = {p: sd[0] for p, sd in stored.items()}
    specs = []
    for name in hf_order(view.names):
        pl = view.placements[name]
        dt = dtype if dtype is not None else np.result_type(*(stored[leaf][1] for leaf in pl.leaves))
        specs.append((name, hf_shape(pl, shapes), np.dtype(dt)))
    return specs


def read_tensor(view: HFView, name: str, shape: tuple) -> np.ndarray:
    """HF tensor `name` (of HF shape `shape`) from the params, as `view.read` but with the
    transpose done by `fast_layout`."""
    pl = view.placements[name]
    parts = tuple(view.reader.read(leaf, pl.layer) for leaf in pl.leaves)
    if len(parts) == 1:
        parts = (for_to_hf(parts[0], shape),)
    return pl.rule.to_hf(parts)


def relative_tower(config: dict) -> Optional[str]:
    """`mm_vision_tower` when it names a directory relative to the checkpoint (as the fixtures'
    `"clip"`): the export then carries that directory, so it stands alone."""
    name = config.get("mm_vision_tower")
    if not name or os.path.isabs(name) or name in BUILTIN_VISION_CONFIGS or "/" in name.strip("./"):
        return None
    return name


def write_vision_tower(directory: str, view: HFView, specs: list, vision_dict: dict, side_dir: str) -> None:
    """An HF `CLIPVisionModel` directory (config.json, model.safetensors with `vision_model.*` names,
    the processor config) from the checkpoint's own vision tensors."""
    os.makedirs(directory, exist_ok=True)
    prefix = "model.vision_tower.vision_tower."
    tower = [(name[len(prefix):], shape, dt) for name, shape, dt in specs if name.startswith(prefix)]
    shapes = {name: shape for name, shape, _ in specs}
    write_hf_weights(directory, tower, lambda n: read_tensor(view, prefix + n, shapes[prefix + n]).astype(
        dict((t[0], t[2]) for t in tower)[n], copy=False), 1 << 62, desc="vision tower")
    write_config(directory, {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
                             **{k: v for k, v in vision_dict.items() if k not in ("architectures", "model_type")}})
    processor = os.path.join(side_dir, "preprocessor_config.json")
    if os.path.exists(processor):
        import shutil
        shutil.copy2(processor, directory)


def convert_jax_to_hf(src: str, out: str, dtype: Optional[str] = None, max_shard_size="5GB",
                      overwrite: bool = False, reader=None) -> str:
    """Converts JAX directory `src` into HF directory `out` (see the module doc). Returns `out`.
    `reader`: what reads the params (default `ParamsReader(src/params)`; `convert.lora` passes one
    that merges LoRA adapters)."""
    src = os.path.abspath(os.fspath(src))
    out = check_output(out, overwrite, sources=[src])
    max_bytes = parse_size(max_shard_size)
    config = read_config(src)
    check_model_type(config, src)
    if not os.path.isdir(os.path.join(src, PARAMS_DIR)):
        raise FileNotFoundError(f"{src} has no {PARAMS_DIR}/ directory: not a JAX checkpoint (convert.hf_to_jax writes "
                                "one)")
    vision, vision_dict, _ = resolve_vision(config, src)
    reader = ParamsReader(os.path.join(src, PARAMS_DIR)) if reader is None else reader
    cfg = model_config(config, vision)
    view = HFView(reader, cfg)  # detects the stored layer layout; raises on missing / unknown leaves
    stored = check_stored_shapes(reader, leaf_shapes(cfg, view.scan_layers), src)
    specs = tensor_specs(view, stored, parse_dtype(dtype))
    want = {name: (shape, dt) for name, shape, dt in specs}
    with staged_output(out, overwrite) as tmp:
        write_hf_weights(tmp, specs, lambda n: read_tensor(view, n, want[n][0]).astype(want[n][1], copy=False),
                         max_bytes,
                         desc=f"{os.path.basename(src)} -> safetensors")
        write_config(tmp, hf_config(config, dtype))
        copy_side_files([src], tmp)
        tower = relative_tower(config)
        if tower is not None:
            write_vision_tower(os.path.join(tmp, tower), view, specs, vision_dict, tmp)
    log.info("wrote %s", out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.jax_to_hf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="JAX checkpoint directory (config.json + params/)")
    ap.add_argument("--out", required=True, help="output HF checkpoint directory")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="cast every tensor (default: keep the stored dtypes)")
    ap.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = ap.parse_args(argv)

    def work():
        convert_jax_to_hf(args.src, args.out, args.dtype, args.max_shard_size, args.overwrite)
    return run(work)


if __name__ == "__main__":
    sys.exit(main())
