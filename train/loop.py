"""The training loop: `train(config) -> TrainResult`.

Per step: the next process-local batch becomes global arrays on the mesh, the jitted step runs
(state donated), and the host reads the previous step's metrics (one step late, so it never waits
for the device; inside `jax.transfer_guard("disallow")` no other host transfer can sneak in).
Checkpoints every `checkpoint.every_steps` steps, at `train.stop_at_step`, on SIGTERM and at the
end; a run directory that holds checkpoints resumes from the latest.

Failure handling: a non-finite loss or gradient norm never reaches the params (the step drops the
update). With `train.nonfinite: stop` the run raises `NonFiniteError` naming the step and the
last good checkpoint; with `skip` it counts the step and goes on (raising after `max_skipped`).
SIGTERM (single process: our handler; multi-process: jax's preemption sync point, so every
process saves the same step) saves a checkpoint and returns with `stopped="preempted"`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from typing import Callable, Optional

import jax

from . import lora, multihost
from .checkpointing import Checkpointer
from .config import TrainConfig, to_dict
from .data import make_pipeline
from .logging_utils import MetricsLogger, StepTimer
from .model_setup import generation_config, initial_params, model_config, with_data_settings
from .trainer import build_trainer, check_batch_fits, mesh_from_config

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A step produced a non-finite loss or gradient norm (`train.nonfinite: stop`)."""


@dataclasses.dataclass
class TrainResult:
    """`step`: optimizer steps done; `stopped`: `finished` | `stop_at_step` | `preempted`;
    `losses`: `{step: loss}` seen by this process; `last_checkpoint`: its step directory or None;
    `state`: the final TrainState (device arrays)."""

    step: int
    stopped: str
    losses: dict
    last_checkpoint: Optional[str]
    skipped: int
    state: object = None
    total_steps: int = 0


class _Preemption:
    """SIGTERM -> save and stop. Single process: a flag set by our handler. Several processes:
    jax's preemption service (all processes agree on the step)."""

    def __init__(self):
        self.flag = False
        self.previous = None
        self.distributed = jax.process_count() > 1
        if not self.distributed:
            try:
                self.previous = signal.signal(signal.SIGTERM, self._handler)
            except ValueError:  # not the main thread
                self.previous = None

    def _handler(self, signum, frame):
        del signum, frame
        self.flag = True
        log.warning("SIGTERM: saving a checkpoint after the current step, then stopping")

    def reached(self, step: int) -> bool:
        if self.distributed:
            from jax.experimental import multihost_utils
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:
                return False
        return self.flag

    def close(self):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _record(step: int, m: dict, dt: Optional[float], lr_names: list) -> dict:
    rec = {"step": step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"])}
    lrs = {k: float(m[f"lr/{k}"]) for k in lr_names}
    rec["lr"] = lrs[lr_names[0]] if lr_names else 0.0
    rec.update({f"lr/{k}": v for k, v in lrs.items()})
    rec["supervised_tokens"] = int(m["supervised_tokens"])
    rec["tokens"] = int(m["tokens"])
    rec["finite"] = bool(m["finite"])
    rec["skipped"] = int(m["skipped"])
    if dt is not None:
        rec["step_time_s"] = dt
        rec["tokens_per_s"] = rec["tokens"] / dt if dt > 0 else 0.0
    rec["time"] = time.time()
    return rec


def train(cfg: TrainConfig, on_step: Optional[Callable[[dict], None]] = None) -> TrainResult:
    """Runs (or resumes) the configured training. `on_step(record)` is called on every process
    with each step's metrics record (tests, custom hooks)."""
    multihost.initialize(cfg.distributed)
    pidx, pcount = jax.process_index(), jax.process_count()
    primary = pidx == 0
    mc, model_dir = model_config(cfg.model)
    mc = with_data_settings(mc, cfg.data)
    mesh = mesh_from_config(cfg)
    rows = check_batch_fits(cfg, mesh, pcount)  # before the data is read or anything compiles

    data_iter, steps_per_epoch = make_pipeline(cfg, mc, pidx, pcount, num_steps=cfg.train.max_steps,
                                               model_dir=model_dir, reference_rows=rows)
    total = cfg.train.max_steps or math.ceil(cfg.train.epochs * steps_per_epoch)
    trainer = build_trainer(cfg, mc, total, mesh)
    stop_at = min(total, cfg.train.stop_at_step or total)

    ckpt = None
    if cfg.checkpoint.dir:
        model_json = generation_config(cfg.model).add_to(mc.to_hf_dict())
        ckpt = Checkpointer(cfg.checkpoint, model_json, to_dict(cfg))
    start = ckpt.latest_step() if ckpt is not None and cfg.checkpoint.resume else None
    if start is not None:
        log.info("resuming from %s", ckpt.step_dir(start))
        state = ckpt.restore(start, trainer.abstract_state, data_iter)
    else:
        start = 0
        if cfg.lora.enabled:
            params = lora.initial_params(cfg, trainer, cfg.checkpoint.dir)
        else:
            params = initial_params(cfg.model, trainer.model, trainer.param_shardings, trainer.random_params,
                                    cfg.checkpoint.dir)
        state = trainer.init_state(params)
    last_ckpt = ckpt.step_dir(start) if ckpt is not None and start else None

    log_dir = cfg.logging.dir or (ckpt.dir if ckpt is not None else None)
    logger = MetricsLogger(log_dir, primary, total, start, cfg.logging.progress_bar, cfg.logging.tensorboard)
    logger.message(f"training {total} steps ({steps_per_epoch} per epoch) of {cfg.train.global_batch_size} rows on "
                   f"mesh {dict(mesh.shape)}, {pcount} process(es); starting at step {start}")
    preempt = _Preemption()
    timer = StepTimer()
    lr_names = list(trainer.schedules)
    losses: dict = {}
    skipped = 0
    pending = None  # (step, device metrics) of the last dispatched step

    def drain():
        """Reads the pending step's metrics (waits for it); raises on a non-finite stop."""
        nonlocal pending, skipped
        if pending is None:
            return
        step, m = pending
        pending = None
        rec = _record(step, jax.device_get(m), timer.lap(), lr_names)
        losses[step] = rec["loss"]
        skipped = rec["skipped"]
        logger.write(rec)
        if on_step is not None:
            on_step(rec)
        if not rec["finite"]:
            where = last_ckpt or "none (no checkpoint written yet)"
            msg = (f"non-finite loss ({rec['loss']}) or gradient norm ({rec['grad_norm']}) at step {step}; the update "
                   f"was dropped. Last good checkpoint: {where}")
            if cfg.train.nonfinite == "stop":
                raise NonFiniteError(msg + ". Set train.nonfinite=skip to skip such steps.")
            logger.message(msg + f" (skipped {skipped} so far)")
            if skipped > cfg.train.max_skipped:
                raise NonFiniteError(f"{skipped} non-finite steps > train.max_skipped={cfg.train.max_skipped}; "
                                     f"last good checkpoint: {where}")

    def save(step, wait=False):
        nonlocal last_ckpt
        if ckpt is None:
            return
        drain()  # never checkpoint a step whose metrics were not checked
        ckpt.save(step, state, data_iter, wait=wait)
        last_ckpt = ckpt.step_dir(step)

    step = start
    stopped = "finished"
    guard = "disallow" if cfg.train.transfer_guard else "allow"
    try:
        while step < stop_at:
            try:
                local = next(data_iter)
            except StopIteration:
                log.warning("the data ran out at step %d of %d", step, total)
                break
            batch = trainer.put_batch(local)
            with jax.transfer_guard(guard):
                state, metrics = trainer.step(state, batch)
            step += 1
            drain()
            pending = (step, metrics)
            if preempt.reached(step):
                save(step, wait=True)
                stopped = "preempted"
                logger.message(f"stopped by SIGTERM at step {step}; checkpoint {last_ckpt}")
                break
            if step % cfg.checkpoint.every_steps == 0 and step < stop_at:
                save(step)
        else:
            stopped = "stop_at_step" if stop_at < total else "finished"
        drain()
        if stopped != "preempted" and step > start:
            save(step, wait=True)
    finally:
        preempt.close()
        logger.close()
        if ckpt is not None:
            ckpt.close()
        close = getattr(data_iter, "close", None)
        if close is not None:
            close()
    return TrainResult(step=step, stopped=stopped, losses=losses, last_checkpoint=last_ckpt, skipped=skipped,
                       state=state, total_steps=total)
