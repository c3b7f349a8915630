"""What a resumed run may change: the stored config of a run directory against the new one.

A run directory's `train_config.json` and `config.json` (the model) are the run's identity once
it holds a checkpoint. Resuming restores the params, the optimiser state, the RNG and the data
iterator's position, so everything that shapes the trajectory must be the same; what only
changes where or how fast the same computation runs may differ. `MAY_CHANGE` lists the keys
(dotted; `section.*` for a whole section) a resume may change; every other key must equal the
stored value. The model's weight-source keys may change (a moved checkpoint) because the model
itself is compared through `config.json`.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Mapping, Optional

from .config import ConfigError, TrainConfig, config_keys, to_dict

MAY_CHANGE = (
    "stage",
    "checkpoint.*", "logging.*", "distributed.*", "mesh.*",
    "model.path", "model.llm_path", "model.vision_path", "model.config_json", "model.init_from_checkpoint",
    "model.init_patterns", "model.init_patterns.*", "model.init_seed", "model.parts_dir",
    "model.compute_dtype", "model.remat_policy",
    "data.image_folder", "data.video_folder", "data.length_buckets", "data.length_buckets.*",
    "data.num_workers", "data.worker_buffer_size", "data.read_threads", "data.prefetch", "data.on_bad_sample",
    "train.stop_at_step", "train.loss_chunk_size", "train.nonfinite", "train.max_skipped", "train.transfer_guard",
    "train.max_empty_steps", "train.max_bad_fraction",
)
_ABSENT = "<absent>"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts / lists -> `{"a.b.0.c": leaf}` (empty containers are leaves)."""
    if isinstance(tree, Mapping) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(tree, (list, tuple)) and tree:
        out = {}
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: list(tree) if isinstance(tree, tuple) else tree}


def may_change(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in MAY_CHANGE)


def config_differences(stored: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """`(key, stored value, new value)` for every key that differs and may not change. A key the
    stored config lacks (written before the key existed) counts as its default."""
    old = flatten(_over_defaults(to_dict(TrainConfig()), stored))
    cur = flatten(new)
    keys = config_keys()
    out = []
    for key in sorted(set(old) | set(cur)):
        a, b = old.get(key, _ABSENT), cur.get(key, _ABSENT)
        obsolete = not any(key == k or key.startswith(k + ".") for k in keys)
        if a != b and not may_change(key) and not obsolete:
            out.append((key, a, b))
    return out


def _over_defaults(defaults: Any, stored: Any) -> Any:
    """`stored` with the keys it lacks taken from `defaults` (dicts merged, lists as stored)."""
    if isinstance(defaults, Mapping) and isinstance(stored, Mapping):
        merged = {k: _over_defaults(v, stored[k]) if k in stored else v for k, v in defaults.items()}
        merged.update({k: v for k, v in stored.items() if k not in defaults})
        return merged
    return stored


def model_differences(stored: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """`(key, stored, new)` where two model `config.json` dicts give different architectures
    (both read through `LlavaMiniConfig`, so spelling and defaults do not count)."""
    from llava_mini_jax.config import LlavaMiniConfig
    a = flatten(LlavaMiniConfig.from_hf_dict(dict(stored)).to_hf_dict())
    b = flatten(LlavaMiniConfig.from_hf_dict(dict(new)).to_hf_dict())
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def check_resume(run_dir: str, step: int, stored_train: Optional[Mapping], new_train: Mapping,
                 stored_model: Optional[Mapping], new_model: Mapping) -> None:
    """Raises ConfigError naming every key that differs from the stored run where a resume may not
    change it, and what may change."""
    diffs = []
    if stored_train is not None:
        diffs += config_differences(stored_train, new_train)
    if stored_model is not None:
        diffs += [(f"model config.json {k}", a, b) for k, a, b in model_differences(stored_model, new_model)]
    if not diffs:
        return
    shown = "; ".join(f"{k}: {a!r} (stored) -> {b!r} (now)" for k, a, b in diffs[:12])
    more = f"; and {len(diffs) - 12} more" if len(diffs) > 12 else ""
    raise ConfigError(
        f"checkpoint.dir={run_dir} holds a run at step {step} whose config differs where a resume may not "
        f"change it: {shown}{more}. A resume may change only {', '.join(MAY_CHANGE)}. Run with the stored "
        f"config ({run_dir}/train_config.json), or start a new run directory (model.init_from_checkpoint={run_dir} "
        f"takes its weights)")
