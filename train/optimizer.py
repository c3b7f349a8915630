"""AdamW over parameter groups, with frozen parameters that get no gradient and no state.

A parameter's group is the first `optimizer.groups` entry with a `match` regex found in its
`a/b/c` path (e.g. `mm_projector/linear_0/kernel`); a parameter in no group, matching
`optimizer.freeze`, or without a gradient path (`no_gradient_params`) is frozen. The train step
differentiates only the trainable parameters (`state.split`), so frozen ones cost no
weight-gradient compute, hold no optimiser state, get no weight decay and stay bit-identical.

Parameters without a gradient path are those the model's loss cannot reach: the vision tower
(under `stop_gradient`, SPEC A §11), CLIP's unused `post_layernorm`, and in LLaVA-Mini mode the
token embedding (text enters the pre-fusion under `stop_gradient`, SPEC Q5; a tied LM head gives it
a gradient again). The PyTorch trainer has `requires_grad` on for the LLM's embedding but its
AdamW skips a parameter whose `.grad` is None, so it neither moves nor decays: freezing them is
the same update.

The transformation is
`clip_by_global_norm_torch(max_grad_norm) -> multi_transform({group: adamw(schedule_g, b1, b2,
eps, weight_decay_g, mask=decay)})`: one global norm over every trainable gradient (as the
PyTorch trainer clips all parameters together), then per-group AdamW. `optax.adamw` applies the
decoupled decay `lr * wd * p` with the pre-update `p`, which is what `torch.optim.AdamW` does.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.extend.core import Literal

from .config import ConfigError, OptimizerConfig, ScheduleConfig
from .schedule import make_schedule

log = logging.getLogger(__name__)

Path = tuple[str, ...]


def path_str(path: Path) -> str:
    return "/".join(path)


@dataclasses.dataclass(frozen=True)
class ParamPlan:
    """Which group each parameter trains in (None: frozen), and which get weight decay."""

    groups: dict  # Path -> group name | None
    decay: dict  # Path -> bool

    @property
    def trainable(self) -> frozenset:
        return frozenset(p for p, g in self.groups.items() if g is not None)

    def summary(self, shapes: Optional[dict] = None) -> dict:
        """`{group or "frozen": number of params (or of elements when shapes are given)}`."""
        out: dict = {}
        for p, g in self.groups.items():
            n = 1
            if shapes is not None:
                for d in shapes[p]:
                    n *= d
            out[g or "frozen"] = out.get(g or "frozen", 0) + n
        return out


def plan_params(paths, cfg: OptimizerConfig, no_gradient: frozenset = frozenset()) -> ParamPlan:
    """Assigns every param path (tuples of names) to a group or to frozen (`no_gradient`: the paths
    `no_gradient_params` found, frozen whatever the groups say)."""
    try:
        freeze = [re.compile(r) for r in cfg.freeze]
        groups = [(g.name, [re.compile(r) for r in g.match]) for g in cfg.groups]
        no_decay = [re.compile(r) for r in cfg.no_decay]
    except re.error as e:
        raise ConfigError(f"optimizer: bad regex {e.pattern!r}: {e}") from e
    assign, decay = {}, {}
    for path in paths:
        s = path_str(path)
        name = None
        if path not in no_gradient and not any(r.search(s) for r in freeze):
            name = next((n for n, rs in groups if any(r.search(s) for r in rs)), None)
        assign[path] = name
        decay[path] = not any(r.search(s) for r in no_decay)
    used = {g for g in assign.values() if g is not None}
    empty = [g.name for g in cfg.groups if g.name not in used]
    if empty:
        log.warning("optimizer groups %s match no trainable parameter", empty)
    if not used:
        raise ConfigError(f"optimizer: no parameter is trainable (groups {[g.name for g in cfg.groups]}, freeze "
                          f"{list(cfg.freeze)}, {len(no_gradient)} params without a gradient path)")
    return ParamPlan(assign, decay)


def no_gradient_params(loss: Callable, abstract_params: Any) -> frozenset:
    """The param paths whose gradient is zero by construction: `jax.grad(loss)` traced (no compute)
    returns them as a broadcast zero constant, the symbolic-zero cotangent JAX instantiates for an
    input no differentiable path reaches (`stop_gradient`, an unused parameter). Integer params
    (a quantized base's values) have no gradient either.

    `loss(params) -> scalar`; `abstract_params` a nested dict of `jax.ShapeDtypeStruct`s.
    """
    leaves, treedef = jax.tree_util.tree_flatten(abstract_params)
    inexact = [jnp.issubdtype(x.dtype, jnp.inexact) for x in leaves]

    def float_loss(floats, others):
        it_f, it_o = iter(floats), iter(others)
        return loss(jax.tree_util.tree_unflatten(treedef, [next(it_f) if f else next(it_o) for f in inexact]))
    floats = [x for x, f in zip(leaves, inexact) if f]
    others = [x for x, f in zip(leaves, inexact) if not f]
    closed = jax.make_jaxpr(jax.grad(float_loss))(floats, others)
    producer = {v: e for e in closed.jaxpr.eqns for v in e.outvars}

    def is_zero_constant(var) -> bool:
        if isinstance(var, Literal):
            return not bool(jnp.any(jnp.asarray(var.val)))
        if var in closed.jaxpr.invars:
            return False
        eqn = producer.get(var)
        if eqn is None:  # a captured constant
            value = closed.consts[closed.jaxpr.constvars.index(var)]
            return not bool(jnp.any(jnp.asarray(value)))
        return eqn.primitive.name in ("broadcast_in_dim", "convert_element_type") and \
            all(is_zero_constant(v) for v in eqn.invars)

    flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    if len(closed.jaxpr.outvars) != len(floats):
        raise ValueError(f"no_gradient_params: {len(floats)} float params but {len(closed.jaxpr.outvars)} gradients")
    paths = [tuple(str(getattr(k, "key", k)) for k in path) for path, _ in flat]
    grads = iter(closed.jaxpr.outvars)
    return frozenset(p for p, f in zip(paths, inexact) if not f or is_zero_constant(next(grads)))


_NO_GRADIENT_CACHE: dict = {}


def model_no_gradient_params(model, abstract_params: Any) -> frozenset:
    """`no_gradient_params` of a `LlavaMini`'s training loss (traced on its `dummy_inputs`, labels
    everywhere; cached per model)."""
    if model not in _NO_GRADIENT_CACHE:
        from llava_mini_jax.loading import dummy_inputs
        inputs = dummy_inputs(model.config)

        def loss(params):
            ids = inputs["input_ids"]
            return model.apply({"params": params}, ids, inputs.get("attention_mask"), inputs.get("images"),
                               jnp.maximum(ids, 0), rngs={"dropout": jax.random.key(0)}).loss
        _NO_GRADIENT_CACHE[model] = no_gradient_params(loss, abstract_params)
    return _NO_GRADIENT_CACHE[model]


class ClipState(NamedTuple):
    pass


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """`torch.nn.utils.clip_grad_norm_`: scale by `min(1, max_norm / (norm + 1e-6))`."""
    def init(params):
        del params
        return ClipState()

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state
    return optax.GradientTransformation(init, update)


def _unflatten(flat: dict) -> dict:
    from flax import traverse_util
    return traverse_util.unflatten_dict(flat)


def make_optimizer(cfg: OptimizerConfig, sched: ScheduleConfig, plan: ParamPlan, total_steps: int
                   ) -> tuple[optax.GradientTransformation, dict[str, Callable]]:
    """`(tx, {group: schedule})` for the trainable subtree (the params `plan.trainable` selects)."""
    trainable = plan.trainable
    labels = _unflatten({p: plan.groups[p] for p in trainable})
    decay_mask = _unflatten({p: plan.decay[p] for p in trainable})
    schedules, inner = {}, {}
    for g in cfg.groups:
        schedules[g.name] = make_schedule(sched, g.lr, total_steps)
        wd = cfg.weight_decay if g.weight_decay is None else g.weight_decay
        inner[g.name] = optax.adamw(schedules[g.name], b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd,
                                    mask=decay_mask)
    used = set(plan.groups[p] for p in trainable)
    inner = {k: v for k, v in inner.items() if k in used}
    schedules = {k: v for k, v in schedules.items() if k in used}
    parts = []
    if cfg.max_grad_norm is not None:
        parts.append(clip_by_global_norm_torch(cfg.max_grad_norm))
    parts.append(optax.multi_transform(inner, labels))
    return optax.chain(*parts), schedules


def tree_paths(tree: Any) -> list[Path]:
    """The `a/b/c` key paths of a nested-dict params tree."""
    from flax import traverse_util
    return list(traverse_util.flatten_dict(tree).keys())
