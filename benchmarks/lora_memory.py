"""LoRA / QLoRA stage 2 on one 24 GB device: what fits, planned from shapes (no allocation).

    python -m benchmarks.lora_memory           # Llama-3.1-8B LLaVA-Mini, rank 128 (~1 min on 2 CPU cores)
    python -m benchmarks.lora_memory --tiny    # the tiny model (seconds; the test suite)

The run of LLaVA's LoRA recipe (`train/README.md`): the stage-2 preset with `lora.rank=128
lora.alpha=256` on every projection of the LLM and the pre-fusion layers, the projector (lr 2e-5)
and the compressor training as usual, the base frozen; bf16 parameters (base and adapters) and
compute, remat `full`, 2048 tokens, one row per step (gradient accumulation makes the batch), the
loss in 512-position chunks. Bases: bf16, int8 and int4 (QLoRA: `lora.quantize_base`; the LLM's and
pre-fusion's projections, LM head and embedding quantized, CLIP in bf16). Per device, as
`benchmarks/train_memory.py` plans (its functions, on the adapted model):

- `params`: every parameter (base, quantized where it is, adapters, CLIP, projector, compressor);
- `opt_state`: AdamW moments of the trainable params (`jax.eval_shape` of the run's optimiser);
- `grads`: the trainable params' gradients, twice (accumulator and micro-batch);
- `activations`: the residuals `jax.vjp` of the loss keeps w.r.t. the trainable params (jaxpr);
- `transient`: one decoder layer's backward at the longest sequence or one loss chunk
  (`train_memory.transient_bytes`).

`fits_24gb`: total <= 24 GiB minus 1 GiB for the runtime and fragmentation (a 24 GB card such as
the RTX 3090 / 4090 has 24 GiB). A plan, not a measurement: on a GPU, the compiled step's
`memory_analysis()` is the check (see `train_memory.py` for how closely the two agreed there).
"""
from __future__ import annotations

import argparse

import jax
from flax import linen as nn
from flax import traverse_util

from benchmarks.common import default_out, emit, write_results
from benchmarks.train_memory import GIB, model_config, residual_bytes, transient_bytes
from llava_mini_jax.loading import abstract_params

BUDGET_GIB = 24.0
RESERVE_GIB = 1.0


def plan(mc, base: str, rank: int, seq_len: int, loss_chunk: int, remat: str, sink: list) -> dict:
    from train.config import load_config
    from train.lora import adapted_model, optimizer_config
    from train.model_setup import build_model
    from train.optimizer import make_optimizer, model_no_gradient_params, plan_params, tree_paths
    from train.state import axis_rules, device_bytes, opt_state_shardings, param_shardings, split
    quantize = [] if base == "bf16" else [f"lora.quantize_base={base}"]
    cfg = load_config("stage2", [f"lora.rank={rank}", f"lora.alpha={2 * rank}", "lora.lr=2e-4",
                                 "optimizer.groups.0.lr=2e-5", "model.param_dtype=bfloat16",
                                 "model.compute_dtype=bfloat16", f"model.remat_policy={remat}", *quantize])
    model = adapted_model(build_model(mc, cfg.model), cfg.lora)
    boxed = abstract_params(model)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(boxed))
    opt = optimizer_config(cfg.optimizer, cfg.lora)
    pl = plan_params(tree_paths(abstract), opt, model_no_gradient_params(model, abstract))
    tx, _ = make_optimizer(opt, cfg.schedule, pl, 1000)
    trainable = split(abstract, pl.trainable)[0]
    mesh = jax.sharding.AbstractMesh((1, 1, 1), ("data", "fsdp", "tensor"))
    p_sh = param_shardings(boxed, mesh, axis_rules())
    opt_abstract = jax.eval_shape(tx.init, trainable)
    parts = {"params": device_bytes(abstract, p_sh),
             "opt_state": device_bytes(opt_abstract, opt_state_shardings(opt_abstract, p_sh, mesh)),
             "grads": 2 * device_bytes(trainable, split(p_sh, pl.trainable)[0]),
             "activations": residual_bytes(model, abstract, pl.trainable, 1, seq_len, loss_chunk),
             "transient": transient_bytes(mc, 1, seq_len, loss_chunk, (1, 1, 1), 2, head_trained=False)["transient"]}
    total = sum(parts.values())
    summary = pl.summary({p: tuple(x.shape) for p, x in traverse_util.flatten_dict(abstract).items()})
    return emit({"kind": "plan", "base": base, "rank": rank, "seq_len": seq_len, "remat": remat,
                 "trainable_params": int(sum(v for k, v in summary.items() if k != "frozen")),
                 "adapter_params": int(summary.get("lora", 0)),
                 **{f"{k}_gib": round(v / GIB, 3) for k, v in parts.items()},
                 "total_gib": round(total / GIB, 3), "total_bytes": total,
                 "fits_24gb": bool(total / GIB <= BUDGET_GIB - RESERVE_GIB)}, sink)


def main(argv=None) -> int:
    import sys
    command = "python -m benchmarks.lora_memory " + " ".join(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--loss-chunk", type=int, default=512)
    ap.add_argument("--remat", default="full", choices=["none", "full", "dots"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    mc = model_config(args.tiny, "mini")
    rank, seq = (4, 64) if args.tiny else (args.rank, args.seq_len)
    sink: list = []
    for base in ("bf16", "int8", "int4"):
        plan(mc, base, rank, seq, min(args.loss_chunk, seq), args.remat, sink)
    write_results(args.out or default_out("lora_memory", args.tiny), "lora_memory",
                  {"command": command.strip(), "rank": rank, "seq_len": seq, "remat": args.remat,
                   "budget_gib": BUDGET_GIB,
                   "reserve_gib": RESERVE_GIB, "tiny": args.tiny}, sink)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
