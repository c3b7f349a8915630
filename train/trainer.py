"""Assembles a run: mesh, model, parameter plan, optimiser, shardings, state and the jitted step.

`build_trainer(cfg, model_config, total_steps)` checks that the config fits the mesh (before any
compile), then builds everything the loop, the benchmarks and the tests share. Compiled steps are
cached per (model, optimiser, schedule, steps, reduction, mesh), so several trainers of one
configuration (a resumed run in the same process, tests) compile once.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util
from jax.sharding import NamedSharding

from llava_mini_jax.config import LlavaMiniConfig
from llava_mini_jax.loading import abstract_params, param_init_fn
from llava_mini_jax.sharding import batch_sharding, make_mesh

from .config import ConfigError, TrainConfig
from .lora import adapted_model, optimizer_config as lora_optimizer_config
from .model_setup import build_model
from .multihost import global_batch
from .optimizer import ParamPlan, make_optimizer, model_no_gradient_params, plan_params, tree_paths
from .state import TrainState, axis_rules, param_shardings, split, state_shardings, with_shardings
from .step import StepSpec, jit_train_step, make_train_step

log = logging.getLogger(__name__)


def mesh_from_config(cfg: TrainConfig, devices=None) -> jax.sharding.Mesh:
    """The (`data`, `fsdp`, `tensor`) mesh; ConfigError naming the sizes when it does not fit."""
    if devices is None:
        devices = jax.devices()
        if cfg.mesh.devices is not None:
            if not 1 <= cfg.mesh.devices <= len(devices):
                raise ConfigError(f"mesh.devices={cfg.mesh.devices}: expected 1..{len(devices)} (the devices found)")
            devices = devices[:cfg.mesh.devices]
    try:
        return make_mesh(cfg.mesh.shape, devices)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_batch_fits(cfg: TrainConfig, mesh: jax.sharding.Mesh, process_count: int) -> int:
    """Checks the batch against the mesh and the processes; returns the rows per reference mean."""
    t = cfg.train
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = t.micro_batch_size
    if micro % dp:
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} / grad_accum_steps={t.grad_accum_steps} = "
                          f"{micro} rows per micro-batch, not divisible by the mesh's data x fsdp = "
                          f"{mesh.shape['data']} x {mesh.shape['fsdp']} = {dp} devices")
    if micro % process_count:
        raise ConfigError(f"micro-batch of {micro} rows is not divisible by {process_count} processes")
    rows = t.reference_rows or micro // dp
    if micro % rows:
        raise ConfigError(f"train.reference_rows={rows} does not divide the micro-batch of {micro} rows")
    return rows


@dataclasses.dataclass
class Trainer:
    """Everything a run shares between initialisation, the step loop and checkpointing."""

    cfg: TrainConfig
    model: Any
    mesh: jax.sharding.Mesh
    rules: tuple
    plan: ParamPlan
    tx: Any
    schedules: dict
    spec: StepSpec
    param_shardings: Any
    state_shardings: TrainState
    abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
    total_steps: int
    step_fn: Any  # jitted (state, batch) -> (state, metrics)
    jitted: dict  # cached jitted helpers: "state_init", "random_params"

    @property
    def batch_sharding(self) -> NamedSharding:
        """Every batch leaf `[A, rows, ...]`: rows over (`data`, `fsdp`)."""
        return batch_sharding(self.mesh, batch_axis=1)

    def init_state(self, params: dict, seed: Optional[int] = None) -> TrainState:
        """A fresh state around `params` (already placed): zero optimiser state, step 0."""
        seed = self.cfg.train.seed if seed is None else seed
        if "state_init" not in self.jitted:
            trainable, tx = self.plan.trainable, self.tx

            def init(params, seed):
                return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=tx.init(split(params, trainable)[0]),
                                  rng=jax.random.PRNGKey(seed), skipped=jnp.zeros((), jnp.int32))
            self.jitted["state_init"] = jax.jit(init, out_shardings=self.state_shardings, donate_argnums=(0,))
        return self.jitted["state_init"](params, jnp.uint32(seed))

    def random_params(self, seed: int) -> dict:
        """Module-initialiser params (one jitted init, outputs sharded: no device holds the model)."""
        if "random_params" not in self.jitted:
            self.jitted["random_params"] = param_init_fn(self.model, self.param_shardings)
        return self.jitted["random_params"](jax.random.key(seed))

    def put_batch(self, local: dict) -> dict:
        """Process-local numpy rows `[A*r, ...]` -> global `[A, G/A, ...]` arrays on the mesh, plus
        `row_index [A, G/A]` (each row's place in the sampler's order, `data.global_row_index`)."""
        from .data import global_row_index, split_micro_batches
        a = self.cfg.train.grad_accum_steps
        local = split_micro_batches({k: local[k] for k in local if k in ("input_ids", "attention_mask", "labels",
                                                                         "images")}, a)
        local["row_index"] = global_row_index(self.cfg, jax.process_index(), jax.process_count())
        return global_batch(local, {k: self.batch_sharding for k in local}, self.cfg.train.micro_batch_size)

    def step(self, state: TrainState, batch: dict):
        return self.step_fn(state, batch)


_STEP_CACHE: dict = {}


def build_trainer(cfg: TrainConfig, mc: LlavaMiniConfig, total_steps: int, mesh=None) -> Trainer:
    mesh = mesh_from_config(cfg) if mesh is None else mesh
    rows = check_batch_fits(cfg, mesh, jax.process_count())
    rules = axis_rules(cfg.mesh.rules)
    model = adapted_model(build_model(mc, cfg.model), cfg.lora)  # the model itself without LoRA
    optimizer = lora_optimizer_config(cfg.optimizer, cfg.lora)
    boxed = abstract_params(model)
    p_sh = param_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(boxed))
    plan = plan_params(tree_paths(abstract), optimizer, model_no_gradient_params(model, abstract))
    tx, schedules = make_optimizer(optimizer, cfg.schedule, plan, total_steps)
    spec = StepSpec(cfg.train.grad_accum_steps, cfg.train.loss_reduction, rows, cfg.train.micro_batch_size,
                    cfg.train.loss_chunk_size)

    def abstract_state_fn(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(split(params, plan.trainable)[0]),
                          rng=jax.random.PRNGKey(0), skipped=jnp.zeros((), jnp.int32))
    abstract_state = jax.eval_shape(abstract_state_fn, abstract)
    s_sh = state_shardings(abstract_state, p_sh, mesh)
    key = (model, optimizer, cfg.schedule, total_steps, spec, mesh, rules)  # model: config + runtime fields
    if key not in _STEP_CACHE:
        trainable_sh = split(p_sh, plan.trainable)[0]
        fn = make_train_step(model, tx, plan.trainable, schedules, spec, trainable_sh, rules, mesh)
        _STEP_CACHE[key] = (jit_train_step(fn, s_sh, mesh), {})
    step_fn, jitted = _STEP_CACHE[key]
    summary = plan.summary({p: tuple(x.shape) for p, x in
                            traverse_util.flatten_dict(abstract).items()})
    log.info("params by group: %s", {k: f"{v:,}" for k, v in summary.items()})
    return Trainer(cfg=cfg, model=model, mesh=mesh, rules=rules, plan=plan, tx=tx, schedules=schedules, spec=spec,
                   param_shardings=p_sh, state_shardings=s_sh, abstract_state=with_shardings(abstract_state, s_sh),
                   total_steps=total_steps, step_fn=step_fn, jitted=jitted)


def count_elements(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
