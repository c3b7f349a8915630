"""Our converted checkpoint format: an orbax params checkpoint plus a standalone `config.json`."""
from __future__ import annotations

import os

PARAMS_DIR = "params"


def is_jax_checkpoint(path: str) -> bool:
    """True for a directory written by `convert.hf_to_jax` (it has a `params/` orbax checkpoint)."""
    return os.path.isdir(os.path.join(path, PARAMS_DIR))


def restore_params(path, cfg, boxed, dtype, mesh=None, shardings=None):
    raise NotImplementedError("orbax checkpoints are not supported yet")
