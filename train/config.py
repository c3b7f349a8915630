"""The training configuration: frozen dataclasses, one per section, loaded from YAML/JSON.

    model:        where the weights come from, precision, remat/scan
    data:         the training set: `llava_mini_jax.data.DataConfig`, issue 5's pipeline's own
                  config (or `source: synthetic`, the built-in set); the trainer fills in its
                  batch, model and host fields
    mesh:         device mesh sizes (`data`, `fsdp`, `tensor`) and logical-axis rule overrides
    optimizer:    AdamW, parameter groups (learning rates), frozen parameters, clipping
    schedule:     linear warmup + cosine decay to 0 (transformers' `get_cosine_schedule_with_warmup`)
    train:        global batch, accumulation, epochs/steps, loss reduction, non-finite policy
    checkpoint:   orbax CheckpointManager directory, interval, retention
    logging:      JSONL metrics, progress bar, TensorBoard
    distributed:  `jax.distributed.initialize` (multi-host)

`load_config(path, overrides)` reads a file (or a preset name: `stage1`, `stage2`), applies
`section.key=value` overrides (values parsed as YAML, list items addressed by index, e.g.
`optimizer.groups.0.lr=2e-5`) and builds `TrainConfig`: OmegaConf does the merging, the override
parsing and the type checks against a schema made from these dataclasses (train/README.md says
why OmegaConf). An unknown key raises `ConfigError` naming it and listing the valid keys of its
section; a value of the wrong type names the key, the value and the expected type.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import types
import typing
from typing import Any, Optional, Sequence, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException,
                              ValidationError)

from llava_mini_jax.data.config import SET_BY_TRAINER, DataConfig
from llava_mini_jax.sharding import MESH_AXES

PRESETS_DIR = pathlib.Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A bad configuration key or value (raised before anything is built)."""


# -- sections -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Where the initial weights come from (exactly one source) and how the model runs.

    Sources: `path` (an HF LLaVA-Mini / LLaVA-v1.5 directory or a converted JAX one, through
    `load_pretrained`); `llm_path` + `vision_path` (an untrained model from an LLM and a CLIP
    directory, issue 3's `init_from_parts`); `config_json` (a `config.json` of the model, weights
    drawn at random with `init_seed`: tests and benchmarks). `init_from_checkpoint` then overlays
    the params matching `init_patterns` (regexes on `a/b/c` param paths; empty = every param the
    checkpoint holds) from a training checkpoint (a run directory: its latest step; or a step
    directory): stage 2 takes the stage-1 projector this way. `overrides` sets other
    `LlavaMiniConfig` fields (e.g. `compressor_size`, `prefusion_layers`, `resolution_ratio`);
    `model_max_length` and `image_aspect_ratio` are the `data` section's (their one owner: the
    trained model's config takes them from there). `parts_dir`: where `init_from_parts` writes the combined model (default `RUN/init_from_parts`,
    reused when it exists).
    """

    path: Optional[str] = None
    llm_path: Optional[str] = None
    vision_path: Optional[str] = None
    config_json: Optional[str] = None
    init_from_checkpoint: Optional[str] = None
    init_patterns: tuple[str, ...] = ()
    init_seed: int = 0
    mode: Optional[str] = None
    param_dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    scan_layers: bool = True
    remat_policy: str = "full"
    overrides: dict = dataclasses.field(default_factory=dict)
    parts_dir: Optional[str] = None

    def __post_init__(self):
        from llava_mini_jax.config import LlavaMiniConfig
        fields = [f.name for f in dataclasses.fields(LlavaMiniConfig)
                  if f.name not in ("llm", "vision", "max_length", "image_aspect_ratio")]
        bad = [k for k in self.overrides if k not in fields]
        if bad:
            raise ConfigError(f"model.overrides: unknown LlavaMiniConfig field(s) {bad}; valid: {', '.join(fields)}")
        sources = [k for k in ("path", "llm_path", "config_json") if getattr(self, k)]
        if len(sources) > 1:
            raise ConfigError(f"model: give one weight source, got {sources} (path | llm_path+vision_path | "
                              "config_json)")
        if bool(self.llm_path) != bool(self.vision_path):
            raise ConfigError("model.llm_path and model.vision_path go together (init_from_parts)")
        _choice("model.mode", self.mode, (None, "mini", "baseline"))
        _choice("model.param_dtype", self.param_dtype, DTYPES)
        _choice("model.compute_dtype", self.compute_dtype, DTYPES)
        _choice("model.remat_policy", self.remat_policy, ("none", "full", "dots"))

    @property
    def source(self) -> Optional[str]:
        if self.path:
            return "path"
        if self.llm_path:
            return "parts"
        if self.config_json:
            return "config_json"
        return None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh sizes per axis (one may be -1: the remaining devices) and overrides of
    `llava_mini_jax.sharding.LOGICAL_AXIS_RULES` (`logical name: mesh axis | [axes] | null`).
    `devices` uses only the first N devices (single-process debugging; default all)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: dict = dataclasses.field(default_factory=dict)
    devices: Optional[int] = None

    def __post_init__(self):
        sizes = self.shape
        if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"mesh sizes data={self.data} fsdp={self.fsdp} tensor={self.tensor}: each must be >= 1, "
                              "at most one -1 (the remaining devices)")
        for name, axes in self.rules.items():
            for a in (axes if isinstance(axes, (list, tuple)) else [axes]):
                if a is not None and a not in MESH_AXES:
                    raise ConfigError(f"mesh.rules.{name}={axes!r}: unknown mesh axis {a!r}; the axes are "
                                      f"{list(MESH_AXES)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """Params whose `a/b/c` path matches one of the `match` regexes (`re.search`; the first group
    that matches wins) train with learning rate `lr` (and `weight_decay`, default the optimizer's)."""

    name: str
    match: tuple[str, ...]
    lr: float
    weight_decay: Optional[float] = None

    def __post_init__(self):
        if not self.match:
            raise ConfigError(f"optimizer.groups[{self.name}].match is empty")
        if self.lr < 0:
            raise ConfigError(f"optimizer.groups[{self.name}].lr={self.lr}: expected >= 0")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW over parameter groups. A param in no group, or matching `freeze`, is frozen (no
    gradient taken, no optimiser state), and so is every param the loss cannot reach (the vision
    tower; the token embedding in LLaVA-Mini mode). `no_decay` regexes: params that never get weight decay (biases and norm
    scales, as the reference)."""

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    groups: tuple[ParamGroup, ...] = (ParamGroup("default", (".*",), 1e-4),)
    freeze: tuple[str, ...] = ()
    no_decay: tuple[str, ...] = ("(^|/)bias$", "(^|/)scale$")

    def __post_init__(self):
        if not self.groups:
            raise ConfigError("optimizer.groups is empty: nothing would train")
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ConfigError(f"optimizer.groups: duplicate names {names}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"optimizer.max_grad_norm={self.max_grad_norm}: expected > 0 or null (no clipping)")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate multiplier: linear warmup over `warmup_steps` (default ceil(warmup_ratio x
    total steps)), then `decay` to 0 at the last step (`cosine`, `linear`) or `constant`."""

    warmup_ratio: float = 0.03
    warmup_steps: Optional[int] = None
    decay: str = "cosine"

    def __post_init__(self):
        _choice("schedule.decay", self.decay, ("cosine", "linear", "constant"))
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError(f"schedule.warmup_ratio={self.warmup_ratio}: expected in [0, 1]")

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return math.ceil(total_steps * self.warmup_ratio)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """`global_batch_size` rows per optimizer step, in `grad_accum_steps` micro-batches.

    `max_steps` fixes the number of optimizer steps (the schedule's length); default `epochs` x
    steps per epoch. `stop_at_step` ends the run early at that step (saving a checkpoint) without
    changing the schedule: a planned interruption. `loss_reduction`: `token` (default: the mean
    CE over every supervised token of the global batch) or `reference` (mean over per-device
    micro-batch means, as the PyTorch trainer; `reference_rows` rows per mean, default the
    micro-batch rows of one data-parallel device). `loss_chunk_size`: positions per
    cross-entropy chunk (the LM head runs one chunk at a time, so no `[B, L, V]` logits are held;
    0: full logits). `nonfinite`: `stop` (raise, naming the step and the last good checkpoint) or
    `skip` (drop the update, count it; stop after `max_skipped`). Bad data stops the run
    (`DataError`): `max_empty_steps` consecutive steps without one supervised token in the global
    batch (0: never), or more than `max_bad_fraction` of the rows so far without one (bad samples
    skipped, fully masked, no answer; 1.0: never).
    """

    global_batch_size: int = 256
    grad_accum_steps: int = 1
    epochs: float = 1.0
    max_steps: Optional[int] = None
    stop_at_step: Optional[int] = None
    seed: int = 0
    loss_reduction: str = "token"
    reference_rows: Optional[int] = None
    loss_chunk_size: int = 512
    nonfinite: str = "stop"
    max_skipped: int = 100
    max_empty_steps: int = 3
    max_bad_fraction: float = 0.5
    transfer_guard: bool = True

    def __post_init__(self):
        for k in ("global_batch_size", "grad_accum_steps"):
            _positive(f"train.{k}", getattr(self, k))
        if self.global_batch_size % self.grad_accum_steps:
            raise ConfigError(f"train.global_batch_size={self.global_batch_size} is not divisible by "
                              f"train.grad_accum_steps={self.grad_accum_steps}")
        _choice("train.loss_reduction", self.loss_reduction, ("token", "reference"))
        if self.loss_chunk_size < 0:
            raise ConfigError(f"train.loss_chunk_size={self.loss_chunk_size}: expected >= 0 (0: full logits)")
        _choice("train.nonfinite", self.nonfinite, ("stop", "skip"))
        if self.epochs <= 0:
            raise ConfigError(f"train.epochs={self.epochs}: expected > 0")
        if self.max_steps is not None:
            _positive("train.max_steps", self.max_steps)
        if self.max_empty_steps < 0:
            raise ConfigError(f"train.max_empty_steps={self.max_empty_steps}: expected >= 0 (0: never stop)")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(f"train.max_bad_fraction={self.max_bad_fraction}: expected in [0, 1] (1: never stop)")

    @property
    def micro_batch_size(self) -> int:
        return self.global_batch_size // self.grad_accum_steps


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """orbax `CheckpointManager` under `dir` (none: no checkpoints): every `every_steps` steps and
    at the end, keeping the last `keep`; `resume` restarts from the latest step found there."""

    dir: Optional[str] = None
    every_steps: int = 1000
    keep: int = 3
    async_save: bool = True
    resume: bool = True

    def __post_init__(self):
        _positive("checkpoint.every_steps", self.every_steps)
        _positive("checkpoint.keep", self.keep)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Process 0 writes one JSON line per step to `dir/metrics.jsonl` (`dir` default: the
    checkpoint directory, else no file), shows a progress bar, and TensorBoard events when
    `tensorboard` and a writer package is installed."""

    dir: Optional[str] = None
    progress_bar: bool = True
    tensorboard: bool = False
    level: str = "INFO"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """`initialize`: `auto` (when the environment names a coordinator or a multi-process job:
    JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, TPU pod slices), `always`, `never`. The other keys
    are passed to `jax.distributed.initialize` when set. `cpu_collectives` is the CPU backend's
    cross-process collectives (`gloo`; CPU runs only)."""

    initialize: str = "auto"
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    cpu_collectives: str = "gloo"

    def __post_init__(self):
        _choice("distributed.initialize", self.initialize, ("auto", "always", "never"))
        _choice("distributed.cpu_collectives", self.cpu_collectives, ("gloo", "mpi", "none"))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The whole run. `stage` is informational (written into the metadata)."""

    stage: str = "custom"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=functools.partial(  # the pipeline's own config
        DataConfig, group_by_modality_length=True, read_threads=8))
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)

    def __post_init__(self):
        if self.checkpoint.dir:  # retention deletes old steps: never a weight source inside the run
            from convert.staging import check_not_overlapping
            m = self.model
            for key in ("path", "llm_path", "vision_path", "init_from_checkpoint"):
                try:
                    check_not_overlapping(self.checkpoint.dir, [getattr(m, key)], "checkpoint.dir")
                except ValueError as e:
                    raise ConfigError(f"{e} (model.{key}); a run directory holds only its own steps") from None
        default = DataConfig()
        changed = [k for k in SET_BY_TRAINER if getattr(self.data, k) != getattr(default, k)]
        if changed:
            raise ConfigError(f"data.{changed[0]} is set by the trainer (from train.global_batch_size, the model and "
                              f"the processes); leave out {', '.join('data.' + k for k in changed)}")

    def to_dict(self) -> dict:
        return to_dict(self)


DTYPES = ("float32", "bfloat16", "float16")


def _choice(key: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: expected one of {list(allowed)}")


def _positive(key: str, value) -> None:
    if value < 1:
        raise ConfigError(f"{key}={value}: expected >= 1")


# -- YAML, overrides and types: OmegaConf ----------------------------------------------------------
# OmegaConf merges the defaults, the file and the `section.key=value` overrides and checks every
# key and value against a schema built from the dataclasses above (tuples as lists, so overrides
# can address list items); `from_dict` then builds the frozen dataclasses, whose `__post_init__`
# checks the values' meaning.
_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@functools.lru_cache(maxsize=None)
def _schema_class(cls):
    """A mutable twin of dataclass `cls` for OmegaConf: same fields, types and defaults, with
    `tuple[X, ...]` as `list[X]` and nested config dataclasses twinned the same way."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        tp = _schema_type(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = dataclasses.field(default_factory=functools.partial(_twin, f.default))
        elif f.default_factory is not dataclasses.MISSING:
            default = dataclasses.field(default_factory=functools.partial(_twin_factory, f.default_factory))
        else:
            default = dataclasses.field()
        fields.append((f.name, tp, default))
    return dataclasses.make_dataclass(cls.__name__, fields)


def _schema_type(tp):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return Optional[_schema_type(inner[0])] if len(inner) == 1 else Any
    if origin is tuple:
        return list[_schema_type(args[0])]
    if dataclasses.is_dataclass(tp):
        return _schema_class(tp)
    return tp


def _twin(value):
    """A default as the schema holds it: config dataclasses as their twins, tuples as lists."""
    if dataclasses.is_dataclass(value):
        return _schema_class(type(value))(**{f.name: _twin(getattr(value, f.name))
                                             for f in dataclasses.fields(value)})
    if isinstance(value, (list, tuple)):
        return [_twin(v) for v in value]
    if isinstance(value, dict):
        return {k: _twin(v) for k, v in value.items()}
    return value


def _twin_factory(factory):
    return _twin(factory())


def _schema(cls=None) -> DictConfig:
    return OmegaConf.structured(_schema_class(cls or TrainConfig))


def _config_error(e: OmegaConfBaseException, schema_cls=None) -> ConfigError:
    """An OmegaConf error as a one-line ConfigError naming the key (and the valid keys, or what
    was expected)."""
    key = str(e.full_key or e.key or "").replace("[", ".").replace("]", "")
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and "not in" in str(e):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        names = _section_keys(schema_cls or TrainConfig, parent)
        return ConfigError(f"unknown key {key!r}; valid keys of {parent or 'the top level'}: {', '.join(names)}")
    if isinstance(e, ValidationError):
        expected = _EXPECTED.get(_leaf_type(schema_cls or TrainConfig, key))
        if expected is None:
            expected = str(e).splitlines()[0]
        return ConfigError(f"{key}={e.value!r}: expected {expected}")
    if isinstance(e, MissingMandatoryValue):
        return ConfigError(f"{key}: a value is required")
    return ConfigError(f"{key}: {str(e).splitlines()[0]}")


def _walk(cls, key: str):
    """The type hint at dotted `key` (list indices step into the item type)."""
    tp = cls
    for part in [p for p in key.split(".") if p]:
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
            origin = typing.get_origin(tp)
        if origin is tuple:
            tp = typing.get_args(tp)[0]
            continue
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


def _leaf_type(cls, key: str):
    tp = _walk(cls, key)
    if typing.get_origin(tp) in (Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _section_keys(cls, section: str) -> list[str]:
    tp = _leaf_type(cls, section) if section else cls
    return [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []


def from_dict(cls, d) -> Any:
    """Dataclass `cls` from nested dicts (or a DictConfig): OmegaConf checks keys and types against
    `cls`'s schema, then the frozen dataclasses are built (lists become tuples)."""
    try:
        merged = OmegaConf.merge(_schema(cls), d)
        plain = OmegaConf.to_container(merged, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise _config_error(e, cls) from None
    return _build(cls, plain, "")


def _build(tp, value, key: str):
    """Plain (validated) containers -> the frozen dataclasses, tuples where the hints say so."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        kwargs = {k: _build(hints[k], v, f"{key}.{k}" if key else k) for k, v in value.items()}
        try:
            return tp(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key or tp.__name__}: {e}") from e
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return tuple(_build(item, v, f"{key}.{i}") for i, v in enumerate(value))
    return value


def to_dict(obj) -> Any:
    """A dataclass config as plain JSON-able dicts/lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# -- files and overrides --------------------------------------------------------------------------
def resolve_config_path(path: str | os.PathLike) -> pathlib.Path:
    """A file path, or a preset name (`stage1`, `stage2`) from `train/configs/`."""
    p = pathlib.Path(path)
    if p.is_file():
        return p
    preset = PRESETS_DIR / f"{path}.yaml"
    if preset.is_file():
        return preset
    presets = sorted(q.stem for q in PRESETS_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config {str(path)!r} is neither a file nor a preset ({presets})")


def read_config_file(path: str | os.PathLike) -> DictConfig:
    """A YAML (or JSON, a subset of YAML) config file or preset, as OmegaConf reads it."""
    p = resolve_config_path(path)
    d = OmegaConf.load(p)
    if not isinstance(d, DictConfig):
        raise ConfigError(f"{p}: expected a mapping at the top level, got a list")
    return d


def apply_override(cfg: DictConfig, item: str) -> None:
    """Applies one `a.b.c=value` to `cfg` in place (value parsed as YAML, e.g. `[a, b]`,
    `{embed: null}`, `1e-3`; list items by index, e.g. `optimizer.groups.0.lr=2e-5`). A string
    given for a list key is a one-item list (`data.data_path=a.json`)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. train.global_batch_size=64)")
    key, raw = (part.strip() for part in item.split("=", 1))
    if not key or not all(key.split(".")):
        raise ConfigError(f"override {item!r}: empty key segment")
    value = OmegaConf.create(f"v: {raw}" if raw else "v: null")["v"] if raw else None
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, str) and typing.get_origin(_leaf_type(TrainConfig, key)) is tuple:
        value = [value]
    node = cfg
    for part in key.split("."):  # list items must exist: name the index when one does not
        if isinstance(node, ListConfig):
            if not part.lstrip("-").isdigit():
                raise ConfigError(f"override key {key!r}: {part!r} must be a list index (0..{len(node) - 1})")
            if not -len(node) <= int(part) < len(node):
                raise ConfigError(f"override key {key!r}: index {int(part)} out of range for a list of {len(node)}")
            node = node[int(part)]
        elif isinstance(node, DictConfig):
            node = node.get(part) if part in node else None
        else:
            break
    try:
        OmegaConf.update(cfg, key, value, merge=isinstance(value, list))  # lists: items typed, list replaced
    except OmegaConfBaseException as e:
        raise _config_error(e) from None


def load_config(path: Optional[str | os.PathLike] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """`TrainConfig` from a YAML/JSON file or preset name (or the defaults), then `overrides`."""
    cfg = _schema()
    try:
        if path is not None:
            cfg = OmegaConf.merge(cfg, read_config_file(path))
    except OmegaConfBaseException as e:
        raise _config_error(e) from None
    for item in overrides:
        apply_override(cfg, item)
    return from_dict(TrainConfig, cfg)


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML (`--print-config`)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)), sort_keys=False)


def config_keys(cls=TrainConfig, prefix: str = "") -> list[str]:
    """Every overridable key (`section.key`), for help texts."""
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp):
            out.extend(config_keys(tp, key))
        else:
            out.append(key)
    return out
