"""The training configuration: frozen dataclasses, one per section, loaded from YAML/JSON.

    model:        where the weights come from, precision, remat/scan
    data:         the training set (issue 5's pipeline) or the built-in synthetic set
    mesh:         device mesh sizes (`data`, `fsdp`, `tensor`) and logical-axis rule overrides
    optimizer:    AdamW, parameter groups (learning rates), frozen parameters, clipping
    schedule:     linear warmup + cosine decay to 0 (transformers' `get_cosine_schedule_with_warmup`)
    train:        global batch, accumulation, epochs/steps, loss reduction, non-finite policy
    checkpoint:   orbax CheckpointManager directory, interval, retention
    logging:      JSONL metrics, progress bar, TensorBoard
    distributed:  `jax.distributed.initialize` (multi-host)

`load_config(path, overrides)` reads a file (or a preset name: `stage1`, `stage2`), applies
`section.key=value` overrides (values parsed as YAML, list items addressed by index, e.g.
`optimizer.groups.0.lr=2e-5`) and builds `TrainConfig`. An unknown key raises `ConfigError`
naming it and listing the valid keys of its section; a value of the wrong type names the key,
the value and the expected type.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import types
import typing
from typing import Any, Optional, Sequence, Union

import yaml

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
    `LlavaMiniConfig` fields (e.g. `compressor_size`, `prefusion_layers`, `resolution_ratio`).
    `parts_dir`: where `init_from_parts` writes the combined model (default `RUN/init_from_parts`,
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
    max_length: Optional[int] = None
    overrides: dict = dataclasses.field(default_factory=dict)
    parts_dir: Optional[str] = None

    def __post_init__(self):
        from llava_mini_jax.config import LlavaMiniConfig
        fields = [f.name for f in dataclasses.fields(LlavaMiniConfig) if f.name not in ("llm", "vision")]
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
class DataConfig:
    """The training set. `source: synthetic` is the built-in image-question set (`synthetic_*`
    keys; tests, smoke runs, benchmarks); `auto` / `json` / `tfds` read LLaVA-format data through
    issue 5's grain pipeline (`llava_mini_jax.data.make_train_pipeline`): `data_path` (json files or
    a TFDS directory), `image_folder`, `video_folder`, `tokenizer_path` (default: the model
    directory), `template` (`plain` stage 1; `vicuna_v1` / `llava_llama_3_1` stage 2),
    `max_length` (longest LLM sequence, vision tokens included; longer samples are skipped),
    `length_buckets` (padding lengths), `on_bad_sample` (`skip`: an inert row takes its place and
    is counted; `raise`), workers and threads. The batch size and accumulation come from `train`."""

    source: str = "auto"
    data_path: tuple[str, ...] = ()
    image_folder: str = ""
    video_folder: str = ""
    tokenizer_path: Optional[str] = None
    tfds_split: str = "train"
    template: str = "vicuna_v1"
    max_length: int = 2048
    image_aspect_ratio: str = "pad"
    num_frames: int = 8
    group_by_modality_length: bool = True
    shuffle: bool = True
    seed: int = 0
    length_buckets: Optional[tuple[int, ...]] = None
    on_bad_sample: str = "skip"
    num_workers: int = 0
    read_threads: int = 8
    prefetch: int = 4
    synthetic_size: int = 512
    synthetic_classes: int = 4
    synthetic_noise: float = 0.3

    def __post_init__(self):
        _choice("data.source", self.source, ("auto", "json", "tfds", "synthetic"))
        _choice("data.template", self.template, ("plain", "vicuna_v1", "v1", "llava_v1", "llava_llama_3_1"))
        _choice("data.on_bad_sample", self.on_bad_sample, ("skip", "raise"))
        for k in ("max_length", "num_frames", "prefetch", "synthetic_size", "synthetic_classes"):
            _positive(f"data.{k}", getattr(self, k))


MESH_AXES = ("data", "fsdp", "tensor")


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
    `skip` (drop the update, count it; stop after `max_skipped`).
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
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)

    def to_dict(self) -> dict:
        return to_dict(self)


DTYPES = ("float32", "bfloat16", "float16")


def _choice(key: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: expected one of {list(allowed)}")


def _positive(key: str, value) -> None:
    if value < 1:
        raise ConfigError(f"{key}={value}: expected >= 1")


# -- dict <-> dataclass ---------------------------------------------------------------------------
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value, tp):
    """`value` (from YAML/JSON) as type `tp`, or ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}={value!r}: expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping of {tp.__name__} fields "
                              f"{[f.name for f in dataclasses.fields(tp)]}")
        return from_dict(tp, value, key)
    if origin is tuple:
        (item, *rest) = typing.get_args(tp)
        if isinstance(value, (str, dict)) or not isinstance(value, Sequence):
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, Sequence):
                raise ConfigError(f"{key}={value!r}: expected a list")
        return tuple(_coerce(f"{key}.{i}", v, item) for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number")
        try:
            return float(value)  # YAML 1.1 reads `1e-3` as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected a number") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    return value


def from_dict(cls, d: dict, prefix: str = ""):
    """Builds dataclass `cls` from a nested dict, rejecting unknown keys (listing the valid ones)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        where = prefix or "the top level"
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(repr(_join(prefix, k)) for k in unknown)}; valid keys of {where}: "
                          f"{', '.join(names)}")
    kwargs = {k: _coerce(_join(prefix, k), v, hints[k]) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e


def _join(prefix: str, key) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


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


def read_config_file(path: str | os.PathLike) -> dict:
    p = resolve_config_path(path)
    text = p.read_text()
    d = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(d).__name__}")
    return d


def apply_override(d: dict, item: str) -> None:
    """Applies one `a.b.c=value` (value parsed as YAML) to the nested dict `d` in place."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. train.global_batch_size=64)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key segment")
    value = yaml.safe_load(raw) if raw.strip() else None
    node: Any = d
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[:i + 1]))
    last = parts[-1]
    if isinstance(node, list):
        idx = _index(last, key, len(node))
        node[idx] = value
    else:
        node[last] = value


def _index(part: str, key: str, n: int) -> int:
    if not part.lstrip("-").isdigit():
        raise ConfigError(f"override key {key!r}: {part!r} must be a list index (0..{n - 1})")
    i = int(part)
    if not -n <= i < n:
        raise ConfigError(f"override key {key!r}: index {i} out of range for a list of {n}")
    return i


def _child(node, part: str, key: str):
    """The container under `part` (created when missing), for an override to descend into."""
    if isinstance(node, list):
        return node[_index(part, key, len(node))]
    if not isinstance(node, dict):
        raise ConfigError(f"override key {key!r}: {type(node).__name__} value has no keys")
    if part not in node or node[part] is None:
        node[part] = {}
    elif isinstance(node[part], tuple):
        node[part] = list(node[part])
    return node[part]


def _defaults_with_lists(cls) -> dict:
    """The default config as nested dicts (so overrides can index default lists)."""
    return to_dict(cls())


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "rules":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: Optional[str | os.PathLike] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """`TrainConfig` from a YAML/JSON file or preset name (or the defaults), then `overrides`."""
    d = read_config_file(path) if path is not None else {}
    unknown = [k for k in d if k not in [f.name for f in dataclasses.fields(TrainConfig)]]
    if unknown:
        from_dict(TrainConfig, {k: d[k] for k in unknown})  # raises, listing the valid keys
    d = _merge(_defaults_with_lists(TrainConfig), d)
    for item in overrides:
        apply_override(d, item)
    return from_dict(TrainConfig, d)


def config_keys(cls=TrainConfig, prefix: str = "") -> list[str]:
    """Every overridable key (`section.key`), for help texts."""
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(config_keys(tp, _join(prefix, f.name)))
        else:
            out.append(_join(prefix, f.name))
    return out
