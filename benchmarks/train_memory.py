"""Per-device training memory of the 8B LLaVA-Mini (Llama-3.1-8B + CLIP-L/336) on 8, 64 and 256
devices, from shapes and shardings only (nothing is allocated; runs on a laptop CPU).

    python -m benchmarks.train_memory                      # stage 2, 8/64/256 devices
    python -m benchmarks.train_memory --stage 1 --rows-per-device 4
    python -m benchmarks.train_memory --tiny               # tiny model, seconds (tests)

For each device count, two meshes: pure FSDP `(data=1, fsdp=N, tensor=1)` and FSDP inside groups
of 8 `(data=N/8, fsdp=8, tensor=1)`. Per device:

- `params`: float32 master weights, each leaf's shard under `train.state.param_shardings` (the
  logical-axis rules of `llava_mini_jax/sharding.py` on an `AbstractMesh`);
- `opt_state`: AdamW moments of the trainable params only (`jax.eval_shape` of the real optimiser
  of the stage preset), sharded like their params;
- `grads`: float32 gradients of the trainable params (twice when accumulating: the accumulator
  and the micro-batch's);
- `activations`: what the backward pass keeps from the forward of one micro-batch of
  `--rows-per-device` rows x `--seq-len` tokens on one device: the residuals of `jax.vjp` with
  respect to the trainable params, read from its jaxpr (inputs excluded), with the configured
  remat (`full`: each decoder layer keeps only its input). `activations_no_remat` is the same
  without remat. Not counted: the transient buffers of one layer's recomputation and backward,
  FSDP's all-gathered weights of the layer in flight, XLA's temporaries and fragmentation.

Global batch 256: rows per device = min(`--rows-per-device`, 256 / data-parallel devices), gradient
accumulation steps = 256 / (rows per device x data-parallel devices).
Prints one JSON line per figure; writes `benchmarks/results/train_memory.json`.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.extend.core import Var
from jax.sharding import AbstractMesh

from llava_mini_jax.config import ClipVisionConfig, LlavaMiniConfig
from llava_mini_jax.loading import abstract_params
from llava_mini_jax.model import LlavaMini

from benchmarks.common import LLAMA31_8B, emit, write_results

GIB = 1024 ** 3
GLOBAL_BATCH = 256


def model_config(tiny: bool, mode: str) -> LlavaMiniConfig:
    if tiny:
        from train.tiny import tiny_model_config
        mc = tiny_model_config(mode)
    else:
        mc = LlavaMiniConfig(llm=LLAMA31_8B, vision=ClipVisionConfig(), mode=mode, projector_type="mlp2x_gelu",
                             vision_select_layer=-2, compressor_size=1, prefusion_layers=4)
    return mc


def residual_bytes(model: LlavaMini, abstract: dict, trainable: frozenset, rows: int, seq_len: int) -> int:
    """Bytes of the forward values `jax.vjp` keeps for the backward (w.r.t. the trainable params) of
    one micro-batch, read from the jaxpr: the outputs of the vjp that are not its inputs."""
    from train.state import join, split
    mc = model.config
    v = mc.vision
    batch = dict(input_ids=jax.ShapeDtypeStruct((rows, seq_len), jnp.int32),
                 attention_mask=jax.ShapeDtypeStruct((rows, seq_len), jnp.int32),
                 labels=jax.ShapeDtypeStruct((rows, seq_len), jnp.int32),
                 images=jax.ShapeDtypeStruct((rows, 1, v.num_channels, v.image_size, v.image_size), jnp.float32))
    params, frozen = split(abstract, trainable)

    def residuals(params, frozen, batch):
        def loss(p):
            return model.apply({"params": join(p, frozen)}, batch["input_ids"], batch["attention_mask"],
                               batch["images"], batch["labels"]).loss
        return jax.vjp(loss, params)[1]
    closed = jax.make_jaxpr(residuals)(params, frozen, batch)
    inputs = set(closed.jaxpr.invars)
    seen, total = set(), 0
    for var in closed.jaxpr.outvars:
        if not isinstance(var, Var) or var in inputs or var in seen:  # literals and inputs hold no activation
            continue
        seen.add(var)
        total += int(np.prod(var.aval.shape, dtype=np.int64)) * var.aval.dtype.itemsize
    return total


def meshes(counts) -> list[tuple[int, int, int]]:
    out = []
    for n in counts:
        out.append((1, n, 1))
        if n >= 16 and n % 8 == 0:
            out.append((n // 8, 8, 1))
    return out


def run(args) -> list:
    from train.config import load_config
    from train.optimizer import make_optimizer, plan_params, tree_paths
    from train.state import axis_rules, device_bytes, opt_state_shardings, param_shardings, split
    results: list = []
    mode = "baseline" if args.stage == 1 else "mini"
    cfg = load_config("stage1" if args.stage == 1 else "stage2")
    mc = model_config(args.tiny, mode)
    model = LlavaMini(mc, dtype=jnp.dtype(args.compute_dtype), param_dtype=jnp.float32, remat_policy=args.remat)
    boxed = abstract_params(model)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(boxed))
    plan = plan_params(tree_paths(abstract), cfg.optimizer)
    tx, _ = make_optimizer(cfg.optimizer, cfg.schedule, plan, 1000)
    trainable_abstract = split(abstract, plan.trainable)[0]
    opt_abstract = jax.eval_shape(tx.init, trainable_abstract)
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract)))
    n_trainable = int(sum(np.prod(x.shape) for x in jax.tree.leaves(trainable_abstract)))
    no_remat = model.clone(remat_policy="none")
    activations = {}  # rows -> (bytes with the configured remat, bytes without)

    def act_bytes(rows):
        if rows not in activations:
            activations[rows] = (residual_bytes(model, abstract, plan.trainable, rows, args.seq_len),
                                 residual_bytes(no_remat, abstract, plan.trainable, rows, args.seq_len))
        return activations[rows]
    base = dict(benchmark="train_memory", model="tiny" if args.tiny else "llama-3.1-8b+clip-l-336", stage=args.stage,
                mode=mode, params=n_params, trainable_params=n_trainable, seq_len=args.seq_len,
                remat=args.remat, compute_dtype=args.compute_dtype)
    rules = axis_rules()
    for shape in meshes(args.devices):
        n = int(np.prod(shape))
        mesh = AbstractMesh(shape, ("data", "fsdp", "tensor"))
        p_sh = param_shardings(boxed, mesh, rules)
        t_sh = split(p_sh, plan.trainable)[0]
        o_sh = opt_state_shardings(opt_abstract, p_sh, mesh)
        dp = shape[0] * shape[1]
        rows = max(1, min(args.rows_per_device, GLOBAL_BATCH // dp))  # a micro-batch cannot exceed the batch
        accum = max(1, GLOBAL_BATCH // (rows * dp))
        act, act_none = act_bytes(rows)
        parts = {"params": device_bytes(abstract, p_sh), "opt_state": device_bytes(opt_abstract, o_sh),
                 "grads": device_bytes(trainable_abstract, t_sh) * (2 if accum > 1 else 1),
                 "activations": act}
        total = sum(parts.values())
        row = dict(base, devices=n, mesh={"data": shape[0], "fsdp": shape[1], "tensor": shape[2]}, rows_per_device=rows,
                   grad_accum=accum,
                   **{f"{k}_gib": round(v / GIB, 3) for k, v in parts.items()},
                   activations_no_remat_gib=round(act_none / GIB, 3), total_gib=round(total / GIB, 3),
                   total_bytes=total)
        emit(row, results)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", type=int, default=2, choices=[1, 2])
    p.add_argument("--devices", default="8,64,256")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--rows-per-device", type=int, default=1)
    p.add_argument("--remat", default="full", choices=["none", "full", "dots"])
    p.add_argument("--compute-dtype", default="bfloat16")
    p.add_argument("--tiny", action="store_true", help="the tiny model on 1, 2, 8 devices (the tests)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.devices, args.seq_len = "1,2,8", 12
    args.devices = [int(x) for x in args.devices.split(",")]
    out = args.out if (args.out or args.tiny) else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                                 "train_memory.json")
    results = run(args)
    write_results(out, "train_memory", {k: v for k, v in vars(args).items() if k != "out"}, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
