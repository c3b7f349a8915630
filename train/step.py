"""The pure loss and the jitted train step.

Loss reductions (`train.loss_reduction`), over a global batch of G rows in A micro-batches:

* `token` (default): `sum of CE over every supervised token / number of supervised tokens`,
  counted over the whole global batch (all devices, all micro-batches). Every supervised token
  weighs the same whatever row, device or micro-batch it sits in.
* `reference`: the PyTorch trainer's reduction. Each device's micro-batch is averaged on its own
  (`reference_rows` rows per mean; default G / A / data-parallel devices), and the gradient is the
  mean of those per-device means over devices (DDP) and accumulation steps. Short-answer rows
  weigh more than under `token`.

Both are a sum over micro-batches followed by one division (by the token count or by the number
of per-device means), so accumulating A micro-batches gives the gradient of one A-times-larger
batch under the same reduction. The division happens after accumulation, which is why
`loss_fn` returns the un-normalised objective and the normaliser's parts as aux.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from llava_mini_jax.loss import token_cross_entropy
from llava_mini_jax.sharding import batch_sharding

from .state import TrainState, join, replicated, split

BATCH_KEYS = ("input_ids", "attention_mask", "labels", "images")


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

    @property
    def means_per_step(self) -> int:
        return self.grad_accum_steps * (self.micro_batch_rows // self.reference_rows)


def make_loss_fn(model: nn.Module, spec: StepSpec) -> Callable:
    """`loss_fn(params, batch, rng) -> (objective, aux)`: the micro-batch's share of the step
    objective before the global normaliser (see the module docstring), and
    `aux = {objective, ce_sum, supervised, tokens}` (sums over the micro-batch)."""
    def loss_fn(params, batch, rng):
        del rng  # the model is deterministic (no dropout in LLaVA-Mini training)
        out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch.get("images"),
                          batch["labels"])
        ce, count = per_row_cross_entropy(out.logits, out.labels)
        if spec.loss_reduction == "token":
            objective = ce.sum()
        else:
            ce_g = ce.reshape(-1, spec.reference_rows).sum(axis=1)
            count_g = count.reshape(-1, spec.reference_rows).sum(axis=1)
            objective = (ce_g / jnp.maximum(count_g, 1.0)).sum()
        aux = dict(objective=objective, ce_sum=ce.sum(), supervised=count.sum(),
                   tokens=out.attention_mask.sum().astype(jnp.float32))
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
        with _context(mesh, rules):
            return _step(state, batch)

    def _step(state: TrainState, batch: dict):
        params, frozen = split(state.params, trainable)
        rng = jax.random.fold_in(state.rng, state.step)

        def grad_micro(i, micro):
            def f(p):
                return loss_fn(join(p, frozen), micro, jax.random.fold_in(rng, i))
            (_, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
            return constrain(jax.tree.map(lambda g: g.astype(jnp.float32), grads)), aux

        if spec.grad_accum_steps == 1:
            grads, aux = grad_micro(0, jax.tree.map(lambda x: x[0], batch))
        else:
            def body(carry, xs):
                i, micro = xs
                return _tree_add(carry, grad_micro(i, micro)), None
            zero_g, zero_aux = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                            jax.eval_shape(grad_micro, 0, jax.tree.map(lambda x: x[0], batch)))
            zero = (constrain(zero_g), zero_aux)
            (grads, aux), _ = jax.lax.scan(body, zero, (jnp.arange(spec.grad_accum_steps), batch))

        norm = aux["supervised"] if spec.loss_reduction == "token" else jnp.float32(spec.means_per_step)
        norm = jnp.maximum(norm, 1.0)
        grads = jax.tree.map(lambda g: g / norm, grads)
        loss = aux["objective"] / norm
        grad_norm = optax.tree.norm(grads)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        new_params, opt_state = keep(new_params, params), keep(opt_state, state.opt_state)
        count = state.step - state.skipped  # the optimiser's update count before this step
        metrics = dict(loss=loss, grad_norm=grad_norm, supervised_tokens=aux["supervised"], tokens=aux["tokens"],
                       finite=ok, skipped=state.skipped + (~ok).astype(jnp.int32))
        metrics.update({f"lr/{g}": s(count) for g, s in schedules.items()})
        new_state = TrainState(step=state.step + 1, params=join(new_params, frozen), opt_state=opt_state,
                               rng=state.rng, skipped=metrics["skipped"])
        return new_state, metrics

    return train_step


class _context:
    """The logical axis rules while tracing.

    No mesh context is entered: under a global mesh, Flax's `DenseGeneral` applies its kernel's
    logical constraint to the flattened kernel inside the init wrapper that `apply` evaluates for
    shape checks, which fails for multi-axis kernels (`[embed, heads, head_dim]`). Without it the
    model's activation constraints are no-ops and XLA's sharding propagation places activations
    from the sharded params and batch (the jit's explicit shardings and the gradient constraints).
    """

    def __init__(self, mesh, rules):
        del mesh
        self.rules, self.cm = rules, None

    def __enter__(self):
        if self.rules is not None:
            self.cm = nn.logical_axis_rules(self.rules)
            self.cm.__enter__()
        return self

    def __exit__(self, *exc):
        if self.cm is not None:
            self.cm.__exit__(*exc)
        return False


def jit_train_step(step_fn: Callable, state_shardings: TrainState, mesh) -> Callable:
    """`jax.jit` with explicit in/out shardings, the state donated, metrics replicated."""
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding(mesh, batch_axis=1)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))
