"""Orbax checkpoints of a training run: async, keep-last-N, exact resume.

A run directory::

    RUN/config.json            the model's HF config (process 0), also copied into each step
    RUN/train_config.json      the TrainConfig of the run (process 0)
    RUN/<step>/params/         orbax params tree in the model's layout (every process writes its shards)
    RUN/<step>/opt_state/      optimiser state (trainable params only)
    RUN/<step>/meta/           step, base RNG key, skipped-step count
    RUN/<step>/data/           the data iterator's state, one JSON file per process
    RUN/<step>/config.json     written once the step is committed

so a step directory is a JAX checkpoint directory: `load_pretrained(RUN/<step>)` loads it and
`python -m convert.jax_to_hf --src RUN/<step> --out HF_DIR` exports it. Restoring the four items
into the same config gives bit-identical continuation (the data iterator resumes at the same
batch, the RNG and optimiser count are restored).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from .config import CheckpointConfig
from .state import TrainState

log = logging.getLogger(__name__)

MODEL_CONFIG = "config.json"
TRAIN_CONFIG = "train_config.json"


# -- the data iterator's state as an orbax item (any iterator with get_state/set_state -> JSON) -----
class DataStateHandler(ocp.CheckpointHandler):
    """Writes `iterator.get_state()` as `process_<i>-of-<n>.json`; restore calls `set_state`."""

    def _file(self, directory) -> epath.Path:
        return epath.Path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory, *args, **kwargs):
        item = kwargs.get("args", args[0] if args else None).item
        self._file(directory).write_text(json.dumps(item.get_state()))

    def restore(self, directory, *args, **kwargs):
        item = kwargs.get("args", args[0] if args else None).item
        f = self._file(directory)
        if not f.exists():
            raise FileNotFoundError(f"{f} does not exist: was the checkpoint written by a run with "
                                    f"{jax.process_count()} processes?")
        item.set_state(json.loads(f.read_text()))
        return item

    def metadata(self, directory):
        return None

    def structure(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    item: Any


def _meta(state: TrainState) -> dict:
    return {"step": state.step, "rng": state.rng, "skipped": state.skipped}


class Checkpointer:
    """The run's `CheckpointManager` plus its side files."""

    def __init__(self, cfg: CheckpointConfig, model_config: dict, train_config: dict):
        if not cfg.dir:
            raise ValueError("checkpoint.dir is not set")
        self.cfg = cfg
        self.dir = os.path.abspath(cfg.dir)
        self.model_config = model_config
        options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save,
                                               create=True)
        self.train_config = train_config
        self.manager = ocp.CheckpointManager(self.dir, options=options)

    def stored_configs(self) -> tuple[Optional[dict], Optional[dict]]:
        """`(train_config.json, config.json)` of the run directory as stored (None where missing)."""
        return tuple(_read_json(os.path.join(self.dir, name)) for name in (TRAIN_CONFIG, MODEL_CONFIG))

    def write_configs(self) -> None:
        """Writes the run's `config.json` and `train_config.json` (process 0); call once the run
        owns the directory (locked, and a resume checked against the stored configs)."""
        if jax.process_index() == 0:
            _write_json(os.path.join(self.dir, MODEL_CONFIG), self.model_config)
            _write_json(os.path.join(self.dir, TRAIN_CONFIG), self.train_config)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def step_dir(self, step: int) -> str:
        return os.path.join(self.dir, str(step))

    def save(self, step: int, state: TrainState, data_iter, wait: bool = False) -> None:
        """Starts saving `state` as step `step` (async unless `wait`); a later save or `close` waits."""
        self._write_step_configs()
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
            meta=ocp.args.StandardSave(_meta(state)), data=DataStateSave(data_iter)), force=True)
        if wait:
            self.wait()

    def restore(self, step: int, abstract_state: TrainState, data_iter) -> TrainState:
        """The state of step `step` (leaves placed in the shardings `abstract_state` carries); the
        data iterator is moved to where that step left it."""
        r = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
            meta=ocp.args.StandardRestore(_meta(abstract_state)), data=DataStateRestore(data_iter)))
        meta = r["meta"]
        return TrainState(step=meta["step"], params=r["params"], opt_state=r["opt_state"], rng=meta["rng"],
                          skipped=meta["skipped"])

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self._write_step_configs()

    def close(self) -> None:
        """Waits for a pending save, then closes the manager (a second call does nothing)."""
        if self.manager is None:
            return
        self.wait()
        self.manager.close()
        self.manager = None

    def _write_step_configs(self) -> None:
        """`config.json` into every committed step directory lacking one (process 0)."""
        if jax.process_index() != 0:
            return
        for step in self.manager.all_steps():
            path = os.path.join(self.step_dir(step), MODEL_CONFIG)
            if os.path.isdir(self.step_dir(step)) and not os.path.exists(path):
                _write_json(path, self.model_config)


def _read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it is the stored config of the run directory") from None


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
