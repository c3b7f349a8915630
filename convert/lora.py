"""Exports a LoRA / QLoRA training step: merged into an HF checkpoint, or the adapters alone in PEFT's
format.

    python -m convert.lora --src RUN/<step> --merged HF_DIR [--dtype bfloat16] [--overwrite]
    python -m convert.lora --src RUN/<step> --peft ADAPTER_DIR [--base-model NAME] [--overwrite]

`--merged`: the reference's HF layout through `convert.jax_to_hf`, reading each adapted kernel as
`W + (alpha / rank) A.B` (a quantized base dequantized first), one tensor (one layer) at a time;
`load_pretrained` and the reference load it as a plain LLaVA-Mini.

`--peft`: `adapter_model.safetensors` + `adapter_config.json` as HF `peft` saves a LoRA on the
model (`PeftModel.from_pretrained(model, ADAPTER_DIR)`): tensors
`base_model.model.<HF module>.lora_A.weight [r, in]` and `.lora_B.weight [out, r]`, where
`<HF module>` is the adapted kernel's HF name (`model.layers.3.self_attn.q_proj`; pre-fusion
layers `model.prefusion_layers.<i>...`, which a plain Llama does not have). Our `A [in, r]` is
`lora_A.weight` transposed, `B [r, out]` is `lora_B.weight` transposed (HF's `[out, in]` weights are
our `[in, out]` kernels flattened and transposed), `lora_alpha` / `r` as trained.

`alpha` and the targets come from the run's `train_config.json` (the step's parent directory), or
`--alpha`. The step's params are read leaf by leaf (`jax_checkpoint.ParamsReader`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional

import numpy as np

from llava_mini_jax.hf_weights import placements
from llava_mini_jax.jax_checkpoint import PARAMS_DIR, ParamsReader, leaf_name, stored_scan_layout
from llava_mini_jax.lora import LORA_A, LORA_B, dequantize_np, is_adapter

from .checkpoint_config import model_config, read_config, resolve_vision
from .command import run
from .jax_to_hf import convert_jax_to_hf
from .staging import check_output, staged_output

log = logging.getLogger(__name__)

TRAIN_CONFIG = "train_config.json"


def run_lora_settings(step_dir: str, alpha: Optional[float] = None) -> dict:
    """`{"alpha", "rank", "dropout", "targets"}` of the run that wrote `step_dir` (its parent's
    `train_config.json`); `alpha` given overrides (and stands in when the file is missing)."""
    path = os.path.join(os.path.dirname(os.path.abspath(step_dir)), TRAIN_CONFIG)
    section = {}
    if os.path.isfile(path):
        with open(path) as f:
            section = json.load(f).get("lora") or {}
    if alpha is not None:
        section = dict(section, alpha=alpha)
    if "alpha" not in section:
        raise FileNotFoundError(f"{path} does not exist (or has no lora section): pass --alpha")
    return section


class MergedReader:
    """A `ParamsReader` of an adapted (LoRA, maybe quantized) params checkpoint seen as the float
    model's: quantized `{qvalue, scale}` leaves read as one dequantized leaf, adapted kernels with
    their update merged, adapters hidden. `scaling` is `alpha / rank`."""

    def __init__(self, reader: ParamsReader, scaling: float):
        self.reader, self.scaling = reader, scaling
        self.directory = reader.directory
        stored = set(reader.paths)
        self._quantized = {p[:-1] for p in stored if p[-1] == "qvalue"}
        self.paths = sorted({p[:-1] if p[:-1] in self._quantized else p for p in stored if not is_adapter(p)})
        self.adapted = {p for p in self.paths if p[-1] == "kernel" and p[:-1] + (LORA_A,) in stored}

    def shape_dtype(self, path):
        if path in self._quantized:
            shape, _ = self.reader.shape_dtype(path + ("qvalue",))
            _, dtype = self.reader.shape_dtype(path + ("scale",))
            return shape, dtype
        return self.reader.shape_dtype(path)

    def read(self, path, layer: Optional[int] = None) -> np.ndarray:
        if path in self._quantized:
            q = self.reader.read(path + ("qvalue",), layer)
            s = self.reader.read(path + ("scale",), layer)
            w = dequantize_np(q, s).astype(s.dtype)
        else:
            w = self.reader.read(path, layer)
        if path in self.adapted:
            a = np.asarray(self.reader.read(path[:-1] + (LORA_A,), layer), np.float32)
            b = np.asarray(self.reader.read(path[:-1] + (LORA_B,), layer), np.float32)
            w = (np.asarray(w, np.float32) + (a @ b).reshape(w.shape) * self.scaling).astype(w.dtype)
        return w


def export_merged(step_dir: str, out: str, alpha: Optional[float] = None, dtype: Optional[str] = None,
                  max_shard_size="5GB", overwrite: bool = False) -> str:
    """`step_dir`'s model with its adapters merged, as an HF checkpoint at `out` (see the module doc)."""
    settings = run_lora_settings(step_dir, alpha)
    reader = ParamsReader(os.path.join(step_dir, PARAMS_DIR))
    rank = _rank(reader)
    return convert_jax_to_hf(step_dir, out, dtype, max_shard_size, overwrite,
                             reader=MergedReader(reader, settings["alpha"] / rank))


def _rank(reader: ParamsReader) -> int:
    ranks = {reader.shape_dtype(p)[0][-1] for p in reader.paths if p[-1] == LORA_A}
    if len(ranks) != 1:
        raise ValueError(f"{reader.directory}: expected LoRA adapters of one rank, found ranks {sorted(ranks)} "
                         f"(is this a LoRA training step?)")
    return ranks.pop()


def peft_tensors(step_dir: str) -> tuple[dict, list, int]:
    """`({peft tensor name: array}, [adapted HF module names], rank)` of a LoRA training step."""
    config = read_config(step_dir)
    vision, _, _ = resolve_vision(config, step_dir)
    cfg = model_config(config, vision)
    reader = ParamsReader(os.path.join(step_dir, PARAMS_DIR))
    rank = _rank(reader)
    stored = set(reader.paths)
    hf_of = {(pl.leaves[0], pl.layer): pl.hf_name for pl in placements(cfg, stored_scan_layout(stored))
             if len(pl.leaves) == 1}
    tensors, modules = {}, []
    for path in sorted(p for p in stored if p[-1] == LORA_A):
        kernel = path[:-1] + ("kernel",)
        n_layers = reader.shape_dtype(path)[0][0] if "layers" in path else None
        for layer in (range(n_layers) if n_layers is not None else [None]):
            name = hf_of.get((kernel, layer))
            if name is None or not name.endswith(".weight"):
                raise ValueError(f"{step_dir}: no HF tensor for the adapted kernel {leaf_name(kernel)}"
                                 + ("" if layer is None else f" layer {layer}"))
            module = name[:-len(".weight")]
            a = reader.read(path, layer)
            b = reader.read(path[:-1] + (LORA_B,), layer)
            tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(np.asarray(a, np.float32).T)
            tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(np.asarray(b, np.float32).T)
            modules.append(module)
    if not tensors:
        raise ValueError(f"{step_dir} holds no LoRA adapters ({LORA_A} leaves)")
    return tensors, modules, rank


def export_peft(step_dir: str, out: str, alpha: Optional[float] = None, base_model: Optional[str] = None,
                overwrite: bool = False) -> str:
    """The adapters of `step_dir` in PEFT's format at `out` (see the module doc)."""
    from safetensors.numpy import save_file
    out = check_output(out, overwrite, sources=[step_dir])  # before the work: a refused output fails fast
    settings = run_lora_settings(step_dir, alpha)
    tensors, modules, rank = peft_tensors(step_dir)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": settings["alpha"],
        "lora_dropout": settings.get("dropout", 0.0), "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "inference_mode": True, "init_lora_weights": True,
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}),
        "base_model_name_or_path": base_model, "revision": None, "modules_to_save": None,
    }
    with staged_output(out, overwrite) as tmp:
        save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
    log.info("wrote %s (%d modules, rank %d)", out, len(modules), rank)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.lora", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="a LoRA training step directory (RUN/<step>)")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--merged", metavar="HF_DIR", help="write the merged model as an HF checkpoint")
    what.add_argument("--peft", metavar="ADAPTER_DIR", help="write the adapters alone in PEFT's format")
    ap.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the run's train_config.json)")
    ap.add_argument("--dtype", default=None, help="--merged: cast every tensor (float32, bfloat16, float16)")
    ap.add_argument("--max-shard-size", default="5GB", help="--merged: largest safetensors shard")
    ap.add_argument("--base-model", default=None, help="--peft: base_model_name_or_path to record")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = ap.parse_args(argv)

    def work():
        if args.merged:
            export_merged(args.src, args.merged, args.alpha, args.dtype, args.max_shard_size, args.overwrite)
        else:
            export_peft(args.src, args.peft, args.alpha, args.base_model, args.overwrite)
    return run(work)


if __name__ == "__main__":
    sys.exit(main())
