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
process saves the same step) saves a checkpoint and returns with `stopped="preempted"`; Ctrl-C
(SIGINT) does the same with `stopped="interrupted"`, and a second Ctrl-C exits at once (exit
status 130; the last complete checkpoint stays).

Bad data stops the run with `DataError` (nothing is saved for the steps it covers): after
`train.max_empty_steps` consecutive steps without one supervised token in the global batch, or
when more than `train.max_bad_fraction` of the rows so far had none (samples skipped as bad,
fully masked, or without an answer), naming what the data pipeline reported.

The run directory (and a separate `logging.dir`) is locked for the run (`run_lock.py`: a second
run on it fails at once, naming the holder); a resume first checks the new config against the
stored one (`resume.py`), and `metrics.jsonl` keeps one row per step (rows of steps a resume
redoes move to `metrics.superseded.jsonl`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import sys
import time
from typing import Callable, Optional

import jax

from . import multihost
from .checkpointing import Checkpointer
from .config import TrainConfig, to_dict
from .data import make_pipeline
from .config import ConfigError
from .logging_utils import MetricsLogger, StepTimer
from .model_setup import generation_config, initial_params, model_config, with_data_settings
from .resume import check_resume
from .run_lock import RunDirectoryBusy, RunLock
from .trainer import build_trainer, check_batch_fits, mesh_from_config

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A step produced a non-finite loss or gradient norm (`train.nonfinite: stop`)."""


class DataError(RuntimeError):
    """The data gives (almost) nothing to learn from: `train.max_empty_steps` / `max_bad_fraction`."""


@dataclasses.dataclass
class TrainResult:
    """`step`: optimizer steps done; `stopped`: `finished` | `stop_at_step` | `preempted` (SIGTERM) |
    `interrupted` (Ctrl-C);
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
    """SIGTERM or Ctrl-C -> save and stop. Single process: a flag set by our handlers (a second
    Ctrl-C exits at once). Several processes: SIGTERM through jax's preemption service (all
    processes agree on the step); Ctrl-C keeps its default there (exits at once)."""

    def __init__(self):
        self.flag = None  # the signal's name once one arrived
        self.previous = {}
        self.distributed = jax.process_count() > 1
        for sig in () if self.distributed else (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass

    def _handler(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self.flag == "SIGINT":
            print("\nsecond Ctrl-C: exiting now; the last complete checkpoint is kept", file=sys.stderr, flush=True)
            os._exit(130)
        self.flag = signal.Signals(signum).name
        how = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        log.warning("%s: saving a checkpoint after the current step, then stopping%s", how,
                    " (Ctrl-C again to exit at once)" if signum == signal.SIGINT else "")

    @property
    def stopped(self) -> str:
        return "interrupted" if self.flag == "SIGINT" else "preempted"

    def reached(self, step: int) -> bool:
        if self.flag:
            return True
        if self.distributed:
            from jax.experimental import multihost_utils
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:
                return False
        return False

    def close(self):
        for sig, previous in self.previous.items():
            if previous is not None:
                signal.signal(sig, previous)


class _DataCheck:
    """Stops the run when the data gives nothing to learn from (`train.max_empty_steps`,
    `train.max_bad_fraction`); the counts are the step's global metrics, so every process agrees."""

    def __init__(self, cfg: TrainConfig, data_iter):
        self.t, self.rows_per_step, self.data_iter = cfg.train, cfg.train.global_batch_size, data_iter
        self.rows = self.empty_rows = self.empty_run = 0

    def update(self, step: int, rec: dict) -> None:
        self.rows += self.rows_per_step
        self.empty_rows += rec["empty_rows"]
        self.empty_run = self.empty_run + 1 if rec["supervised_tokens"] == 0 else 0
        if self.t.max_empty_steps and self.empty_run >= self.t.max_empty_steps:
            raise DataError(f"{self.empty_run} consecutive steps (through step {step}) had no supervised token in the "
                            f"global batch (train.max_empty_steps={self.t.max_empty_steps}); {self._pipeline()}")
        if self.empty_rows > self.t.max_bad_fraction * self.rows:
            raise DataError(f"{self.empty_rows} of the {self.rows} rows of steps up to {step} "
                            f"({self.empty_rows / self.rows:.0%}) had no supervised token, more than "
                            f"train.max_bad_fraction={self.t.max_bad_fraction}; {self._pipeline()}")

    def _pipeline(self) -> str:
        """What the data pipeline of this process reported (the LLaVA pipeline's counters)."""
        stats = getattr(self.data_iter, "stats", None)
        if not stats:
            return "check the data (data.data_path, data.image_folder, data.template)"
        return (f"the data pipeline (this process) reports: {self.data_iter.summary()}; check data.data_path, "
                f"data.image_folder / data.video_folder and data.template")


def _record(step: int, m: dict, dt: Optional[float], lr_names: list) -> dict:
    rec = {"step": step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"])}
    lrs = {k: float(m[f"lr/{k}"]) for k in lr_names}
    rec["lr"] = lrs[lr_names[0]] if lr_names else 0.0
    rec.update({f"lr/{k}": v for k, v in lrs.items()})
    rec["supervised_tokens"] = int(m["supervised_tokens"])
    rec["tokens"] = int(m["tokens"])
    rec["finite"] = bool(m["finite"])
    rec["skipped"] = int(m["skipped"])
    rec["empty_rows"] = int(m["empty_rows"])
    if dt is not None:
        rec["step_time_s"] = dt
        rec["tokens_per_s"] = rec["tokens"] / dt if dt > 0 else 0.0
    rec["time"] = time.time()
    return rec


def train(cfg: TrainConfig, on_step: Optional[Callable[[dict], None]] = None) -> TrainResult:
    """Runs (or resumes) the configured training. `on_step(record)` is called on every process
    with each step's metrics record (tests, custom hooks)."""
    multihost.initialize(cfg.distributed)
    locks = lock_run_directories(cfg)  # before anything is read from or written to them
    try:
        return _train(cfg, on_step)
    finally:
        for lock in locks:
            lock.release()


def lock_run_directories(cfg: TrainConfig) -> list[RunLock]:
    """Locks `checkpoint.dir` and `logging.dir` (process 0; every process raises
    `RunDirectoryBusy` when one is held by another run)."""
    dirs = sorted({os.path.abspath(d) for d in (cfg.checkpoint.dir, cfg.logging.dir) if d})
    locks, error = [], ""
    if jax.process_index() == 0:
        try:
            for d in dirs:
                locks.append(RunLock(d).acquire())
        except RunDirectoryBusy as e:
            for lock in locks:
                lock.release()
            locks, error = [], str(e)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        import numpy as np
        busy = bool(multihost_utils.broadcast_one_to_all(np.int32(bool(error))))
        if busy and not error:
            error = "a run directory of this run is in use by another run (process 0 names it)"
    if error:
        raise RunDirectoryBusy(error)
    return locks


def _open_checkpoints(cfg: TrainConfig, model_json: dict) -> tuple[Optional[Checkpointer], Optional[int]]:
    """The run's Checkpointer (None without `checkpoint.dir`) and the step to resume from. A
    directory holding steps is resumed only with a compatible config (`resume.check_resume`);
    the configs are written once that holds."""
    if not cfg.checkpoint.dir:
        return None, None
    ckpt = Checkpointer(cfg.checkpoint, model_json, to_dict(cfg))
    try:
        latest = ckpt.latest_step()
        if latest is not None:
            if not cfg.checkpoint.resume:
                raise ConfigError(f"checkpoint.dir={ckpt.dir} holds steps {list(ckpt.manager.all_steps())} of an "
                                  "earlier run and checkpoint.resume=false: starting over there would mix two runs; "
                                  "use a new directory, delete those steps, or resume (checkpoint.resume=true)")
            stored_train, stored_model = ckpt.stored_configs()
            check_resume(ckpt.dir, latest, stored_train, to_dict(cfg), stored_model, model_json)
        ckpt.write_configs()
    except BaseException:
        ckpt.close()
        raise
    return ckpt, latest


def _train(cfg: TrainConfig, on_step: Optional[Callable[[dict], None]]) -> TrainResult:
    pidx, pcount = jax.process_index(), jax.process_count()
    primary = pidx == 0
    mc, model_dir = model_config(cfg.model)
    mc = with_data_settings(mc, cfg.data)
    mesh = mesh_from_config(cfg)
    rows = check_batch_fits(cfg, mesh, pcount)  # before the data is read or anything compiles
    ckpt, start = _open_checkpoints(cfg, generation_config(cfg.model).add_to(mc.to_hf_dict()))
    try:
        return _run(cfg, on_step, mc, model_dir, mesh, rows, ckpt, start, primary, pcount)
    finally:
        if ckpt is not None:
            ckpt.close()


def _run(cfg, on_step, mc, model_dir, mesh, rows, ckpt, start, primary, pcount) -> TrainResult:
    data_iter, steps_per_epoch = make_pipeline(cfg, mc, jax.process_index(), pcount, num_steps=cfg.train.max_steps,
                                               model_dir=model_dir, reference_rows=rows)
    try:
        total = cfg.train.max_steps or math.ceil(cfg.train.epochs * steps_per_epoch)
        trainer = build_trainer(cfg, mc, total, mesh)
        if start is not None:
            log.info("resuming from %s", ckpt.step_dir(start))
            state = ckpt.restore(start, trainer.abstract_state, data_iter)
        else:
            start = 0
            state = trainer.init_state(initial_params(cfg.model, trainer.model, trainer.param_shardings,
                                                      trainer.random_params, cfg.checkpoint.dir))
    except BaseException:
        close = getattr(data_iter, "close", None)
        if close is not None:
            close()
        raise
    stop_at = min(total, cfg.train.stop_at_step or total)
    last_ckpt = ckpt.step_dir(start) if ckpt is not None and start else None

    log_dir = cfg.logging.dir or (ckpt.dir if ckpt is not None else None)
    logger = MetricsLogger(log_dir, primary, total, start, cfg.logging.progress_bar, cfg.logging.tensorboard)
    logger.message(f"training {total} steps ({steps_per_epoch} per epoch) of {cfg.train.global_batch_size} rows on "
                   f"mesh {dict(mesh.shape)}, {pcount} process(es); starting at step {start}")
    data_check = _DataCheck(cfg, data_iter)
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
        data_check.update(step, rec)
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
                stopped = preempt.stopped
                logger.message(f"stopped by {'Ctrl-C' if stopped == 'interrupted' else 'SIGTERM'} at step {step}; "
                               f"checkpoint {last_ckpt}")
                break
            if step % cfg.checkpoint.every_steps == 0 and step < stop_at:
                save(step)
        else:
            stopped = "stop_at_step" if stop_at < total else "finished"
        drain()
        if stopped not in ("preempted", "interrupted") and step > start:
            save(step, wait=True)
    finally:
        preempt.close()
        logger.close()
        close = getattr(data_iter, "close", None)
        if close is not None:
            close()
    return TrainResult(step=step, stopped=stopped, losses=losses, last_checkpoint=last_ckpt, skipped=skipped,
                       state=state, total_steps=total)
