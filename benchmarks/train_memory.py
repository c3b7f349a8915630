"""Per-device training memory: planned from shapes and shardings (the 8B LLaVA-Mini on 8, 64 and 256
devices), and read from the compiler (the 1B-class model on 8 simulated devices, next to its plan).

    python -m benchmarks.train_memory                     # 8B plan + 1B compiled, ~5 min on 2 CPU cores
    python -m benchmarks.train_memory --no-compile        # the 8B plan only (seconds)
    python -m benchmarks.train_memory --stage 1 --rows-per-device 4 --no-compile
    python -m benchmarks.train_memory --tiny              # tiny model, plan + compiled, seconds (tests)

**Plan** (`kind: plan`): Llama-3.1-8B + CLIP-L/336; for each device count, pure FSDP
`(data=1, fsdp=N, tensor=1)` and FSDP inside groups of 8 `(data=N/8, fsdp=8, tensor=1)`. Per device:

- `params`: float32 master weights, each leaf's shard under `train.state.param_shardings` (the
  logical-axis rules of `llava_mini_jax/sharding.py` on an `AbstractMesh`);
- `opt_state`: AdamW moments of the trainable params only (`jax.eval_shape` of the real optimiser
  of the stage preset; params without a gradient path are frozen), sharded like their params;
- `grads`: float32 gradients of the trainable params (twice when accumulating: the accumulator
  and the micro-batch's);
- `activations`: what the backward pass keeps from the forward of one micro-batch of
  `--rows-per-device` rows x `--seq-len` tokens on one device: the residuals of `jax.vjp` of the
  training loss (`LlavaMini.row_losses`, cross-entropy in `--loss-chunk` chunks) with respect to
  the trainable params, read from its jaxpr (inputs excluded), with the configured remat (`full`:
  each decoder layer keeps only its input). `activations_no_remat` is the same without remat.
- `transient`: the largest buffers one step holds besides those (`transient_bytes`), the plan's
  correction after comparing it with the compiler: the larger of one decoder layer's backward at
  the longest sequence (the pre-fusion's 576 + 1 + L tokens: `[rows, heads, S, S]` float32
  attention scores, probabilities and their gradient dominate) and the loss (one chunk's float32
  logits and gradient; under FSDP the LM head gathered whole, float32 plus its bf16 copy, and its
  float32 gradient before the reduce-scatter), divided by the `tensor` size.

Global batch 256: rows per device = min(`--rows-per-device`, 256 / data-parallel devices), gradient
accumulation steps = 256 / (rows per device x data-parallel devices).

**Compiled** (`kind: compiled`): the 1B-class model (Llama 16 x 2048, vocabulary 128,256, tied
embeddings + CLIP-L/336, stage 2, `--seq-len` tokens, one row per data-parallel device, bf16
compute, remat `full`) compiled as the real train step (`train.trainer.build_trainer`, lowered on
abstract inputs: nothing is allocated) on 8 simulated CPU devices for meshes (1,1,1), (8,1,1),
(1,8,1), (1,1,8) and (2,2,2); per device: XLA's `memory_analysis()` (arguments + outputs +
temporaries - donated aliases) next to the plan of the same mesh, their ratio, and the state
(params + AdamW state) per device against (1,1,1)'s. What the chunked loss saves: the (1,1,1) step
compiled again with `train.loss_chunk_size=0` (full `[B, L', V]` float32 logits), and the loss
alone (value and gradient from the final hidden states and the LM head) compiled both ways for 1
and 2 rows.

Prints one JSON line per figure; writes `benchmarks/results/train_memory.json`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

if __name__ == "__main__":  # 8 simulated CPU devices for the compiled meshes (set before jax starts)
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402
from jax.extend.core import Var  # noqa: E402
from jax.sharding import AbstractMesh  # noqa: E402

from llava_mini_jax.config import ClipVisionConfig, LlavaMiniConfig  # noqa: E402
from llava_mini_jax.loading import abstract_params  # noqa: E402
from llava_mini_jax.model import LlavaMini  # noqa: E402

from benchmarks.common import LLAMA31_8B, emit, planned_bytes, write_results  # noqa: E402
from benchmarks.train_step import LLAMA32_1B  # noqa: E402

GIB = 1024 ** 3
GLOBAL_BATCH = 256
COMPILED_MESHES = ((1, 1, 1), (8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2))


def model_config(tiny: bool, mode: str, llm=LLAMA31_8B) -> LlavaMiniConfig:
    if tiny:
        from train.tiny import tiny_model_config
        mc = tiny_model_config(mode)
    else:
        mc = LlavaMiniConfig(llm=llm, vision=ClipVisionConfig(), mode=mode, projector_type="mlp2x_gelu",
                             vision_select_layer=-2, compressor_size=1, prefusion_layers=4, vision_tower="bench-clip")
    return mc


def abstract_batch(mc: LlavaMiniConfig, rows: int, seq_len: int, leading: tuple = ()) -> dict:
    v = mc.vision
    shape = leading + (rows,)
    return dict(input_ids=jax.ShapeDtypeStruct(shape + (seq_len,), jnp.int32),
                attention_mask=jax.ShapeDtypeStruct(shape + (seq_len,), jnp.int32),
                labels=jax.ShapeDtypeStruct(shape + (seq_len,), jnp.int32),
                images=jax.ShapeDtypeStruct(shape + (1, v.num_channels, v.image_size, v.image_size), jnp.float32))


def residual_bytes(model: LlavaMini, abstract: dict, trainable: frozenset, rows: int, seq_len: int,
                   loss_chunk: int) -> int:
    """Bytes of the forward values `jax.vjp` keeps for the backward (w.r.t. the trainable params) of
    one micro-batch, read from the jaxpr: the outputs of the vjp that are not its inputs."""
    from train.state import join, split
    batch = abstract_batch(model.config, rows, seq_len)
    params, frozen = split(abstract, trainable)

    def residuals(params, frozen, batch):
        def loss(p):
            args = ({"params": join(p, frozen)}, batch["input_ids"], batch["attention_mask"], batch["images"],
                    batch["labels"])
            if loss_chunk:
                return model.apply(*args, loss_chunk, method=type(model).row_losses)[0].sum()
            return model.apply(*args).loss
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


def transient_bytes(mc: LlavaMiniConfig, rows: int, seq_len: int, loss_chunk: int, shape, compute_bytes: int,
                    head_trained: bool = True) -> dict:
    """The plan's correction against the compiler: the largest buffers a step holds at once besides
    state, gradients and saved residuals, per device, in two phases of which the larger counts.

    - `layer`: the backward of one decoder layer at the longest sequence S (the pre-fusion's
      N + Q + L tokens, or the LLM's L'), whose forward remat recomputes: attention scores,
      probabilities and their gradient `[rows, heads, S, S]` float32, and the projections' and
      MLP's outputs with their gradients at compute width.
    - `loss`: one loss chunk's float32 logits and their gradient `[rows, chunk, V]`; under FSDP
      also the LM head gathered whole (float32 and its compute-dtype copy) and, when it trains,
      its float32 gradient before the reduce-scatter.

    Heads, MLP columns and the vocabulary are split over `tensor`.
    """
    c = mc.llm
    _, fsdp, tensor = shape
    llm_len = seq_len - 1 + mc.tokens_per_frame
    prefusion_len = mc.vision.num_patches + mc.tokens_per_frame + seq_len if mc.is_mini else 0
    s = max(llm_len, prefusion_len)
    widths = 2 * c.num_heads * c.head_dim + 2 * c.num_kv_heads * c.head_dim + 3 * c.intermediate_size
    layer = (3 * rows * c.num_heads * s * s * 4 + 2 * rows * s * widths * compute_bytes) // tensor
    chunk = min(loss_chunk, llm_len) if loss_chunk else llm_len
    head = c.vocab_size * c.hidden_size * (4 + compute_bytes + 4 * head_trained) if fsdp > 1 else 0
    loss = (2 * rows * chunk * c.vocab_size * 4 + head) // tensor
    return {"layer": layer, "loss": loss, "transient": max(layer, loss)}


def loss_memory(vocab: int, width: int, rows: int, seq_len: int, chunk: int, compute_dtype) -> int:
    """Compiled bytes (arguments + outputs + temporaries) of the loss's value and gradient w.r.t. the
    final hidden states `[rows, seq_len, width]` and the LM head `[width, vocab]` (float32, cast to
    the compute dtype), one device: `chunk` positions at a time, or (`chunk=0`) full logits."""
    from llava_mini_jax.loss import chunked_cross_entropy, token_cross_entropy

    def loss(h, w, labels):
        if chunk:
            return chunked_cross_entropy(h, w, labels, chunk, compute_dtype)[0].sum()
        logits = jnp.einsum("btd,dv->btv", h, w.astype(compute_dtype), preferred_element_type=jnp.float32)
        return token_cross_entropy(logits, labels)[0]
    args = (jax.ShapeDtypeStruct((rows, seq_len, width), compute_dtype),
            jax.ShapeDtypeStruct((width, vocab), jnp.float32), jax.ShapeDtypeStruct((rows, seq_len), jnp.int32))
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()
    return planned_bytes(compiled)["total_bytes"]


def meshes(counts) -> list[tuple[int, int, int]]:
    out = []
    for n in counts:
        out.append((1, n, 1))
        if n >= 16 and n % 8 == 0:
            out.append((n // 8, 8, 1))
    return out


@dataclasses.dataclass
class Setup:
    """The model, its abstract params, the stage's parameter plan and optimiser (shared by every mesh)."""

    model: LlavaMini
    boxed: dict
    abstract: dict
    plan: object
    opt_abstract: object
    trainable_abstract: dict


def setup(mc: LlavaMiniConfig, stage: int, compute_dtype: str, remat: str) -> Setup:
    from train.config import load_config
    from train.optimizer import make_optimizer, model_no_gradient_params, plan_params, tree_paths
    from train.state import split
    cfg = load_config("stage1" if stage == 1 else "stage2")
    model = LlavaMini(mc, dtype=jnp.dtype(compute_dtype), param_dtype=jnp.float32, scan_layers=True,
                      remat_policy=remat)
    boxed = abstract_params(model)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(boxed))
    plan = plan_params(tree_paths(abstract), cfg.optimizer, model_no_gradient_params(model, abstract))
    tx, _ = make_optimizer(cfg.optimizer, cfg.schedule, plan, 1000)
    trainable_abstract = split(abstract, plan.trainable)[0]
    return Setup(model, boxed, abstract, plan, jax.eval_shape(tx.init, trainable_abstract), trainable_abstract)


def head_trained(su: Setup) -> bool:
    """Whether the LM head (`llm/lm_head`, or the token embedding when tied) trains in this stage."""
    c = su.model.config.llm
    head = ("llm", "embed_tokens", "embedding") if c.tie_word_embeddings else ("llm", "lm_head")
    return head in su.plan.trainable


def planned_parts(su: Setup, shape, rows: int, accum: int, activations: int, transient: int = 0) -> dict:
    """Per-device bytes of params, AdamW state, gradients, activations (and transients) on a mesh shape."""
    from train.state import axis_rules, device_bytes, opt_state_shardings, param_shardings, split
    mesh = AbstractMesh(tuple(shape), ("data", "fsdp", "tensor"))
    p_sh = param_shardings(su.boxed, mesh, axis_rules())
    parts = {"params": device_bytes(su.abstract, p_sh),
             "opt_state": device_bytes(su.opt_abstract, opt_state_shardings(su.opt_abstract, p_sh, mesh)),
             "grads": device_bytes(su.trainable_abstract, split(p_sh, su.plan.trainable)[0]) * (2 if accum > 1 else 1),
             "activations": activations}
    if transient:
        parts["transient"] = transient
    return parts


def run_plan(args) -> list:
    results: list = []
    mode = "baseline" if args.stage == 1 else "mini"
    mc = model_config(args.tiny, mode)
    su = setup(mc, args.stage, args.compute_dtype, args.remat)
    no_remat = su.model.clone(remat_policy="none")
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(su.abstract)))
    n_trainable = int(sum(np.prod(x.shape) for x in jax.tree.leaves(su.trainable_abstract)))
    activations = {}  # rows -> (bytes with the configured remat, bytes without)

    def act_bytes(rows):
        if rows not in activations:
            activations[rows] = tuple(residual_bytes(m, su.abstract, su.plan.trainable, rows, args.seq_len,
                                                     args.loss_chunk) for m in (su.model, no_remat))
        return activations[rows]
    base = dict(benchmark="train_memory", kind="plan", model="tiny" if args.tiny else "llama-3.1-8b+clip-l-336",
                stage=args.stage, mode=mode, params=n_params, trainable_params=n_trainable, seq_len=args.seq_len,
                remat=args.remat, compute_dtype=args.compute_dtype, loss_chunk=args.loss_chunk)
    for shape in meshes(args.devices):
        n = int(np.prod(shape))
        dp = shape[0] * shape[1]
        rows = max(1, min(args.rows_per_device, GLOBAL_BATCH // dp))  # a micro-batch cannot exceed the batch
        accum = max(1, GLOBAL_BATCH // (rows * dp))
        act, act_none = act_bytes(rows)
        tr = transient_bytes(mc, rows, args.seq_len, args.loss_chunk, shape, jnp.dtype(args.compute_dtype).itemsize,
                             head_trained(su))
        parts = planned_parts(su, shape, rows, accum, act, tr["transient"])
        total = sum(parts.values())
        row = dict(base, devices=n, mesh={"data": shape[0], "fsdp": shape[1], "tensor": shape[2]}, rows_per_device=rows,
                   grad_accum=accum,
                   **{f"{k}_gib": round(v / GIB, 3) for k, v in parts.items()},
                   activations_no_remat_gib=round(act_none / GIB, 3), total_gib=round(total / GIB, 3),
                   total_bytes=total)
        emit(row, results)
    return results


# -- compiled ---------------------------------------------------------------------------------------
def _train_config(config_json: str, shape, rows: int, seq_len: int, remat: str, compute_dtype: str, loss_chunk: int):
    from train.config import load_config
    d, f, t = shape
    return load_config("stage2", [
        f"model.config_json={config_json}", "model.llm_path=null", "model.vision_path=null", "model.path=null",
        "model.init_from_checkpoint=null", "model.mode=mini", f"model.compute_dtype={compute_dtype}",
        "model.param_dtype=float32", "model.scan_layers=true", f"model.remat_policy={remat}", "model.overrides={}",
        "data.source=synthetic", f"data.model_max_length={seq_len}", f"mesh.data={d}", f"mesh.fsdp={f}", f"mesh.tensor={t}",
        f"mesh.devices={d * f * t}", f"train.global_batch_size={rows * d * f}", "train.grad_accum_steps=1",
        "train.max_steps=10", f"train.loss_chunk_size={loss_chunk}", "distributed.initialize=never"])


def compile_step(config_json: str, shape, rows: int, seq_len: int, remat: str, compute_dtype: str,
                 loss_chunk: int) -> tuple[dict, float, object]:
    """`(memory_analysis as planned_bytes, compile seconds, trainer)` of the train step on `shape`."""
    from train.model_setup import model_config as train_model_config
    from train.trainer import build_trainer
    cfg = _train_config(config_json, shape, rows, seq_len, remat, compute_dtype, loss_chunk)
    mc, _ = train_model_config(cfg.model)
    trainer = build_trainer(cfg, mc, cfg.train.max_steps)
    g = cfg.train.global_batch_size
    batch = abstract_batch(mc, g, seq_len, leading=(1,))
    batch["row_index"] = jax.ShapeDtypeStruct((1, g), jnp.int32)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding) for k, v in batch.items()}
    t0 = time.perf_counter()
    compiled = trainer.step_fn.lower(trainer.abstract_state, batch).compile()
    return planned_bytes(compiled), time.perf_counter() - t0, trainer


def run_compiled(args) -> list:
    """The compiled step's memory per device next to the plan, on `COMPILED_MESHES`; then what the
    chunked loss saves, per row, in the whole step and in the loss alone."""
    results: list = []
    rows, seq_len = 1, args.seq_len
    mc = model_config(args.tiny, "mini", llm=LLAMA32_1B)
    path = os.path.join(tempfile.mkdtemp(prefix="train_memory_"), "config.json")
    with open(path, "w") as f:
        json.dump(mc.to_hf_dict(), f)
    su = setup(mc, 2, args.compute_dtype, args.remat)
    act = residual_bytes(su.model, su.abstract, su.plan.trainable, rows, seq_len, args.loss_chunk)
    compute_bytes = jnp.dtype(args.compute_dtype).itemsize
    base = dict(benchmark="train_memory", kind="compiled", model="tiny" if args.tiny else "llama-1b+clip-l-336",
                stage=2, mode="mini", params=int(sum(np.prod(x.shape) for x in jax.tree.leaves(su.abstract))),
                trainable_params=int(sum(np.prod(x.shape) for x in jax.tree.leaves(su.trainable_abstract))),
                vocab=mc.llm.vocab_size, seq_len=seq_len, rows_per_device=rows, remat=args.remat,
                compute_dtype=args.compute_dtype, loss_chunk=args.loss_chunk)
    state_one = None
    for shape in args.compiled_meshes:
        tr = transient_bytes(mc, rows, seq_len, args.loss_chunk, shape, compute_bytes, head_trained(su))
        parts = planned_parts(su, shape, rows, 1, act, tr["transient"])
        plan_total = sum(parts.values())
        mem, compile_s, _ = compile_step(path, shape, rows, seq_len, args.remat, args.compute_dtype, args.loss_chunk)
        state = parts["params"] + parts["opt_state"]
        state_one = state if state_one is None else state_one
        row = dict(base, mesh={"data": shape[0], "fsdp": shape[1], "tensor": shape[2]},
                   plan={f"{k}_gib": round(v / GIB, 3) for k, v in parts.items()},
                   transient_layer_gib=round(tr["layer"] / GIB, 3), transient_loss_gib=round(tr["loss"] / GIB, 3),
                   plan_gib=round(plan_total / GIB, 3),
                   plan_without_transient_gib=round((plan_total - tr["transient"]) / GIB, 3),
                   compiled={k.replace("_bytes", "_gib"): round(v / GIB, 3) for k, v in mem.items()},
                   compiled_gib=round(mem["total_bytes"] / GIB, 3),
                   compiled_over_plan=round(mem["total_bytes"] / plan_total, 3),
                   state_gib=round(state / GIB, 3), state_fraction_of_first_mesh=round(state / state_one, 4),
                   compile_s=round(compile_s, 1))
        emit(row, results)
    # what the chunked loss saves: the first mesh's step with full [B, L', V] float32 logits ...
    first = args.compiled_meshes[0]
    full, compile_s, _ = compile_step(path, first, rows, seq_len, args.remat, args.compute_dtype, 0)
    chunked = results[0]["compiled"]["total_gib"] * GIB
    c = mc.llm
    emit(dict(base, mesh=dict(zip(("data", "fsdp", "tensor"), first)), figure="step_full_logits",
              compiled_full_logits_gib=round(full["total_bytes"] / GIB, 3),
              compiled_chunked_gib=results[0]["compiled_gib"],
              saved_per_row_gib=round((full["total_bytes"] - chunked) / GIB / rows, 3),
              logits_f32_per_row_gib=round(seq_len * c.vocab_size * 4 / GIB, 3), compile_s=round(compile_s, 1)),
         results)
    # ... and the loss alone (its value and gradient from the final hidden states and the head), 1 and 2 rows
    dtype = jnp.dtype(args.compute_dtype)
    by = {(n, k): loss_memory(c.vocab_size, c.hidden_size, n, seq_len, k, dtype)
          for n in (1, 2) for k in (0, args.loss_chunk)}
    emit(dict(base, figure="loss_full_vs_chunked",
              **{f"{'full' if k == 0 else 'chunked'}_{n}_rows_gib": round(v / GIB, 3) for (n, k), v in by.items()},
              saved_per_row_gib=round(((by[2, 0] - by[2, args.loss_chunk]) - (by[1, 0] - by[1, args.loss_chunk]))
                                      / GIB, 3),
              saved_at_1_row_gib=round((by[1, 0] - by[1, args.loss_chunk]) / GIB, 3)), results)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", type=int, default=2, choices=[1, 2])
    p.add_argument("--devices", default="8,64,256")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--rows-per-device", type=int, default=1)
    p.add_argument("--remat", default="full", choices=["none", "full", "dots"])
    p.add_argument("--compute-dtype", default="bfloat16")
    p.add_argument("--loss-chunk", type=int, default=512, help="train.loss_chunk_size (0: full logits)")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled 1B-class meshes")
    p.add_argument("--tiny", action="store_true", help="the tiny model: plan on 1, 2, 8 devices, compiled meshes")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.compiled_meshes = COMPILED_MESHES
    if args.tiny:
        args.devices, args.seq_len, args.compute_dtype = "1,2,8", 12, "float32"
        args.compiled_meshes = ((1, 1, 1), (2, 2, 2))  # two compiles keep the test short
    args.devices = [int(x) for x in args.devices.split(",")]
    if not args.no_compile and jax.device_count() < 8:
        p.error(f"the compiled meshes need 8 devices, found {jax.device_count()} (XLA_FLAGS="
                "--xla_force_host_platform_device_count=8, set by default when run as a script)")
    out = args.out if (args.out or args.tiny) else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                                 "train_memory.json")
    results = run_plan(args)
    if not args.no_compile:
        results += run_compiled(args)
    write_results(out, "train_memory", {k: v for k, v in vars(args).items() if k not in ("out", "compiled_meshes")},
                  results, compiled_meshes=[list(m) for m in args.compiled_meshes])
    return 0


if __name__ == "__main__":
    sys.exit(main())
