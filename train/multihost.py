"""Multi-process (multi-host) plumbing: `jax.distributed`, global batches, the primary process.

One process per host (or per GPU with SLURM/MPI); each holds its local devices, loads only its
rows of the data and contributes them to the global batch with
`jax.make_array_from_process_local_data`. Only process 0 logs and writes metadata; orbax writes
array shards from every process.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

from .config import DistributedConfig

log = logging.getLogger(__name__)

# Environment variables that mean "this is one process of several".
_ENV_HINTS = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def environment_wants_distributed() -> bool:
    """True when the environment describes a multi-process job jax can join."""
    env = os.environ
    if any(env.get(k) for k in _ENV_HINTS):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


_initialized = False


def initialize(cfg: DistributedConfig) -> bool:
    """Calls `jax.distributed.initialize` when the config or the environment asks for it (before
    any other jax call). Returns whether it did."""
    global _initialized
    if _initialized or cfg.initialize == "never":
        return _initialized
    if cfg.initialize == "auto" and not (environment_wants_distributed() or cfg.coordinator_address):
        return False
    kwargs = {k: getattr(cfg, k) for k in ("coordinator_address", "num_processes", "process_id")
              if getattr(cfg, k) is not None}
    if cfg.cpu_collectives != "none":
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    jax.distributed.initialize(**kwargs)
    _initialized = True
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_initialized() -> bool:
    """Whether this process joined a multi-process job through `initialize`."""
    return _initialized


def is_primary() -> bool:
    return jax.process_index() == 0


def global_batch(local: dict, shardings: dict, global_rows: int) -> dict:
    """Process-local numpy leaves `[A, r, ...]` -> global `jax.Array`s `[A, global_rows, ...]`."""
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        shape = (v.shape[0], global_rows) + v.shape[2:]
        out[k] = jax.make_array_from_process_local_data(shardings[k], v, shape)
    return out


def agree(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a collective; call it on all processes)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(np.asarray(multihost_utils.process_allgather(np.asarray([flag], np.int32))).any())


def check_same_everywhere(value: int, what: str) -> None:
    """Raises when processes disagree on `value` (e.g. the batch's padded length)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils
    values = np.asarray(multihost_utils.process_allgather(np.asarray([value], np.int64))).reshape(-1)
    if (values != values[0]).any():
        raise ValueError(f"processes disagree on {what}: {values.tolist()}")
