"""Learning-rate schedules: linear warmup, then cosine (or linear) decay to 0.

`warmup_cosine(peak, warmup, total)` equals transformers' `get_cosine_schedule_with_warmup`
(num_cycles 0.5) times the peak rate at every step: the update with optimiser count `n` (0-based)
uses `peak * n / warmup` while `n < warmup`, then `peak * 0.5 * (1 + cos(pi * p))` with
`p = (n - warmup) / (total - warmup)`, clamped at 0. Like the PyTorch trainer, the first update
therefore has rate 0 when there is a warmup.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from .config import ScheduleConfig


def warmup_cosine(peak: float, warmup: int, total: int) -> optax.Schedule:
    def schedule(count):
        n = jnp.asarray(count, jnp.float32)
        warm = n / max(1, warmup)
        progress = (n - warmup) / max(1, total - warmup)
        decay = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(math.pi * progress)))
        return peak * jnp.where(n < warmup, warm, decay)
    return schedule


def warmup_linear(peak: float, warmup: int, total: int) -> optax.Schedule:
    """transformers' `get_linear_schedule_with_warmup`."""
    def schedule(count):
        n = jnp.asarray(count, jnp.float32)
        warm = n / max(1, warmup)
        decay = jnp.maximum(0.0, (total - n) / max(1, total - warmup))
        return peak * jnp.where(n < warmup, warm, decay)
    return schedule


def warmup_constant(peak: float, warmup: int, total: int) -> optax.Schedule:
    """transformers' `get_constant_schedule_with_warmup`."""
    del total

    def schedule(count):
        n = jnp.asarray(count, jnp.float32)
        return peak * jnp.minimum(1.0, n / max(1, warmup))
    return schedule


_KINDS = {"cosine": warmup_cosine, "linear": warmup_linear, "constant": warmup_constant}


def make_schedule(cfg: ScheduleConfig, peak: float, total_steps: int) -> optax.Schedule:
    """The schedule of one parameter group with peak rate `peak` over `total_steps` updates."""
    warmup = cfg.warmup(total_steps)
    if warmup > total_steps:
        raise ValueError(f"schedule.warmup_steps={warmup} exceeds the run's {total_steps} steps")
    return _KINDS[cfg.decay](peak, warmup, total_steps)
