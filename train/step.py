"""The pure loss and the jitted train step.

Loss reductions (`train.loss_reduction`), over a global batch of G rows in A micro-batches:

* `token` (default): `sum of CE over every supervised token / number of supervised tokens`,
  counted over the whole global batch (all devices, all micro-batches). Every supervised token
  weighs the same whatever row, device or micro-batch it sits in.
* `reference`: the PyTorch trainer's reduction. The global batch in the sampler's order is cut
  into means of `reference_rows` consecutive rows (default G / A / data-parallel devices: what one
  GPU of the PyTorch trainer averages in one micro-step); each mean is its rows' CE sum over their
  supervised-token count, and the loss is the average of the G / `reference_rows` means (DDP's
  average over devices and accumulation steps). Short-answer rows weigh more than under `token`.

Both are a sum over rows followed by one division (by the token count or by the number of
means), so accumulating A micro-batches gives the gradient of one A-times-larger batch under the
same reduction, and neither depends on where a row lives: each row carries `row_index`, its
position in the sampler's order of the global batch, which names its mean, and each row's weight
`1 / (its mean's supervised tokens)` is computed from the labels of the whole step before any
forward pass (`LlavaMini.spliced_labels`), so a mean's rows may sit on any process, device or
micro-batch.

The forward never forms `[B, L', V]` logits: `LlavaMini.row_losses` applies the LM head and the
cross-entropy `loss_chunk` positions at a time (`loss_chunk=0`: full logits, the formulation
before issue 18, kept for comparisons). The step traces under the mesh and the logical rules, so
every activation constraint of the model applies.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from llava_mini_jax.config import IGNORE_INDEX
from llava_mini_jax.loss import token_cross_entropy
from llava_mini_jax.sharding import LOGICAL_AXIS_RULES, activation_sharding, batch_sharding

from .state import TrainState, join, replicated, split

BATCH_KEYS = ("input_ids", "attention_mask", "labels", "images", "row_index")


def per_row_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`(CE sum [B], supervised-token count [B])` per row (shifted, -100 ignored, float32)."""
    return jax.vmap(lambda lg, lb: token_cross_entropy(lg[None], lb[None]))(logits, labels)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Static facts of a train step (hashable: the cache key of compiled steps)."""

    grad_accum_steps: int
    loss_reduction: str  # "token" | "reference"
    reference_rows: int  # rows per mean under "reference"
    micro_batch_rows: int  # global rows per micro-batch
    loss_chunk: int = 512  # positions per cross-entropy chunk; 0: full logits

    @property
    def means_per_step(self) -> int:
        return self.grad_accum_steps * (self.micro_batch_rows // self.reference_rows)


def row_weights(model: nn.Module, spec: StepSpec, batch: dict) -> jnp.ndarray:
    """`[A, rows]` float32 weight of each row's CE sum under `reference`: one over the supervised
    tokens of its mean (the rows whose `row_index // reference_rows` agree), from the whole step's
    labels (no forward pass)."""
    if "row_index" not in batch:
        raise ValueError("loss_reduction=reference needs batch['row_index'] [A, rows], each row's place in the "
                         "sampler's order of the global batch (Trainer.put_batch adds it)")
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}
    labels = model.apply({}, flat["input_ids"], flat["attention_mask"], flat.get("images"), flat["labels"],
                         method=type(model).spliced_labels)
    count = (labels[:, 1:] != IGNORE_INDEX).sum(axis=1).astype(jnp.float32)
    mean = flat["row_index"] // spec.reference_rows
    per_mean = jax.ops.segment_sum(count, mean, num_segments=spec.means_per_step)
    return (1.0 / jnp.maximum(per_mean[mean], 1.0)).reshape(batch["labels"].shape[:2])


def make_loss_fn(model: nn.Module, spec: StepSpec) -> Callable:
    """`loss_fn(params, batch, rng, weights) -> (objective, aux)`: the micro-batch's share of the step
    objective before the global normaliser (see the module docstring; `weights [rows]` from
    `row_weights` under `reference`, ignored under `token`), and `aux = {objective, ce_sum,
    supervised, tokens}` (sums over the micro-batch)."""
    def loss_fn(params, batch, rng, weights=None):
        del rng  # the model is deterministic (no dropout in LLaVA-Mini training)
        args = (batch["input_ids"], batch["attention_mask"], batch.get("images"), batch["labels"])
        if spec.loss_chunk:
            ce, count, tokens = model.apply({"params": params}, *args, spec.loss_chunk,
                                            method=type(model).row_losses)
        else:
            out = model.apply({"params": params}, *args)
            ce, count = per_row_cross_entropy(out.logits, out.labels)
            tokens = out.attention_mask.sum(axis=1).astype(jnp.float32)
        objective = ce.sum() if spec.loss_reduction == "token" else (ce * weights).sum()
        aux = dict(objective=objective, ce_sum=ce.sum(), supervised=count.sum(), tokens=tokens.sum())
        return objective, aux
    return loss_fn


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, trainable: frozenset,
                    schedules: dict, spec: StepSpec, trainable_shardings: Any = None, rules=None,
                    mesh=None) -> Callable:
    """`train_step(state, batch) -> (state, metrics)` (not jitted; see `jit_train_step`).

    `batch` leaves are `[A, micro_rows, ...]` (A = `spec.grad_accum_steps`). Only the trainable
    params are differentiated; frozen ones pass through untouched. A non-finite loss or gradient
    norm drops the update (params and optimiser state keep their values) and counts the step in
    `state.skipped`; `metrics["finite"]` tells the host.
    """
    loss_fn = make_loss_fn(model, spec)

    def constrain(tree):
        if trainable_shardings is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, trainable_shardings)

    def train_step(state: TrainState, batch: dict):
        with mesh_context(mesh, rules):
            return _step(state, batch)

    def _step(state: TrainState, batch: dict):
        params, frozen = split(state.params, trainable)
        rng = jax.random.fold_in(state.rng, state.step)
        batch = {k: v for k, v in batch.items() if k in BATCH_KEYS}
        if spec.loss_reduction == "reference":
            weights = row_weights(model, spec, batch)
        else:
            weights = jnp.ones(batch["labels"].shape[:2], jnp.float32)
        batch = {k: v for k, v in batch.items() if k != "row_index"}
        labels = batch["labels"]  # [A, rows, L]: rows with no supervised label count as empty

        def grad_micro(i, micro, w):
            def f(p):
                return loss_fn(join(p, frozen), micro, jax.random.fold_in(rng, i), w)
            (_, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
            return constrain(jax.tree.map(lambda g: g.astype(jnp.float32), grads)), aux

        if spec.grad_accum_steps == 1:
            grads, aux = grad_micro(0, jax.tree.map(lambda x: x[0], batch), weights[0])
        else:
            def body(carry, xs):
                i, micro, w = xs
                return _tree_add(carry, grad_micro(i, micro, w)), None
            zero_g, zero_aux = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                            jax.eval_shape(grad_micro, 0, jax.tree.map(lambda x: x[0], batch),
                                                           weights[0]))
            zero = (constrain(zero_g), zero_aux)
            (grads, aux), _ = jax.lax.scan(body, zero, (jnp.arange(spec.grad_accum_steps), batch, weights))

        norm = aux["supervised"] if spec.loss_reduction == "token" else jnp.float32(spec.means_per_step)
        norm = jnp.maximum(norm, 1.0)
        grads = jax.tree.map(lambda g: g / norm, grads)
        loss = aux["objective"] / norm
        grad_norm = optax.tree.norm(grads)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(params, opt_state, grads):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state
        # a conditional, not a select of new against old values: the update then runs in place in the
        # donated buffers instead of holding new params and AdamW moments beside the old ones
        new_params, opt_state = jax.lax.cond(ok, update, lambda p, s, g: (p, s), params, state.opt_state, grads)
        count = state.step - state.skipped  # the optimiser's update count before this step
        empty_rows = ((labels[..., 1:] != IGNORE_INDEX).sum(axis=-1) == 0).sum().astype(jnp.int32)
        metrics = dict(loss=loss, grad_norm=grad_norm, supervised_tokens=aux["supervised"], tokens=aux["tokens"],
                       finite=ok, skipped=state.skipped + (~ok).astype(jnp.int32), empty_rows=empty_rows)
        metrics.update({f"lr/{g}": s(count) for g, s in schedules.items()})
        new_state = TrainState(step=state.step + 1, params=join(new_params, frozen), opt_state=opt_state,
                               rng=state.rng, skipped=metrics["skipped"])
        return new_state, metrics

    return train_step


def mesh_context(mesh, rules):
    """The mesh and the logical axis rules while tracing, so that the model's activation constraints
    (`layers.constrain`) apply (`sharding.activation_sharding`; `rules=None`: the library's table).
    No mesh: nothing is set."""
    return activation_sharding(mesh, LOGICAL_AXIS_RULES if rules is None else rules)


def jit_train_step(step_fn: Callable, state_shardings: TrainState, mesh) -> Callable:
    """`jax.jit` with explicit in/out shardings, the state donated, metrics replicated."""
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding(mesh, batch_axis=1)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))
