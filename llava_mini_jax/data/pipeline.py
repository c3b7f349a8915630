"""The grain training pipeline: `make_train_pipeline(config) -> (iterator, steps_per_epoch)`.

::

    MapDataset.source(JsonSource | TfdsSource)       records, random access
      -> reorder by BatchOrder                        seeded epoch order, grouping, host shard
      -> map(SampleProcessor)                         decode + preprocess + tokenize (or skip)
      -> to_iter_dataset(read threads)
      -> mp_prefetch(worker processes)                optional
      -> batch(batch_size, collate)                   pad to a length bucket, stack pixels

Every batch is a pure function of its step, so the iterator state is a small dict (the step and
the counters): restoring it into a fresh pipeline starts grain at that step and replays exactly
the batches an uninterrupted run would give, whatever the number of workers.

Usage (training loop)::

    it, steps_per_epoch = make_train_pipeline(DataConfig(data_path=..., tokenizer_path=...))
    for batch in it:          # dict of numpy arrays, see batching.py
        ...
    state = it.get_state()    # JSON-serialisable; it.set_state(state) resumes
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from typing import Any, Union

from llava_mini_jax.data.batching import BatchInfo, collate, pixel_shape
from llava_mini_jax.data.config import DataConfig
from llava_mini_jax.data.features import MASKED_REASONS, SampleProcessor
from llava_mini_jax.data.order import BatchOrder
from llava_mini_jax.data.sources import JsonSource, TfdsSource, is_tfds_dir
from llava_mini_jax.optional_deps import require

grain = require("grain.python", "the training data pipeline (llava_mini_jax.data.pipeline)")

logger = logging.getLogger(__name__)

Source = Union[JsonSource, TfdsSource]


def open_source(config: DataConfig) -> Source:
    """The raw-sample source `config` names (json files, or a TFDS directory)."""
    paths = config.data_paths
    use_tfds = config.source == "tfds" or (config.source == "auto" and len(paths) == 1
                                           and is_tfds_dir(paths[0]))
    if use_tfds:
        if len(paths) != 1:
            raise ValueError(f"DataConfig.data_path={config.data_path!r}: a TFDS source is one "
                             f"directory")
        return TfdsSource(paths[0], config.tfds_split)
    return JsonSource(paths, config.image_folder, config.video_folder, config.on_bad_sample)


class _Reordered(grain.MapDataset):
    """Element `i` is `parent[order.record_index(i)]`: this host's stream over all epochs."""

    def __init__(self, parent: grain.MapDataset, order: BatchOrder):
        super().__init__(parent)
        self._order = order

    def __len__(self) -> int:
        return self._order.num_steps * self._order.batch_size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._order.record_index(index)]

    def __str__(self) -> str:
        return f"_Reordered(steps={self._order.num_steps}, batch={self._order.batch_size})"


@dataclasses.dataclass(frozen=True)
class Collator:
    """`collate` with the pipeline's fixed settings (a picklable `batch_fn`)."""

    pad_id: int
    first_id: int
    buckets: tuple[int, ...]
    image_shape: tuple[int, ...]
    video_shape: tuple[int, ...]

    def __call__(self, rows):
        return collate(rows, pad_id=self.pad_id, first_id=self.first_id, buckets=self.buckets,
                       image_shape=self.image_shape, video_shape=self.video_shape)


def make_order(config: DataConfig, source: Source) -> BatchOrder:
    """This host's `BatchOrder` over `source`."""
    index, count = config.hosts()
    return BatchOrder(source.kinds, source.words, config.batch_size, index, count, config.seed,
                      config.shuffle, config.group_by_modality_length,
                      config.gradient_accumulation_steps, config.num_epochs,
                      sampler_batch_size=config.sampler_batch_size)


def make_collator(config: DataConfig, processor: SampleProcessor) -> Collator:
    tok = processor.tokenizer
    first_id = tok.bos_id if tok.bos_id is not None else tok.pad_id
    parts = 1 if config.resolution_ratio == 1 else config.resolution_ratio ** 2 + 1
    ip = config.image_processor
    return Collator(
        pad_id=int(tok.pad_id), first_id=int(first_id), buckets=config.buckets(config.hosts()[1]),
        image_shape=pixel_shape("image", parts, ip.crop_height, ip.crop_width, config.num_frames),
        video_shape=pixel_shape("video", parts, ip.crop_height, ip.crop_width, config.num_frames))


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside `absl.app` nobody has parsed them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_dataset(config: DataConfig, order: BatchOrder, source: Source,
                 start_step: int = 0) -> grain.IterDataset:
    """The grain dataset of `(arrays, BatchInfo)` batches from host step `start_step` on."""
    processor = SampleProcessor.from_config(config)
    ds = _Reordered(grain.MapDataset.source(source), order)
    if start_step:
        ds = ds[start_step * config.batch_size:]
    ds = ds.map(processor)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                              prefetch_buffer_size=2 * config.batch_size))
    if config.num_workers:
        _ensure_absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=config.num_workers,
            per_worker_buffer_size=config.worker_buffer_size * config.batch_size))
    return ds.batch(config.batch_size, drop_remainder=True,
                    batch_fn=make_collator(config, processor))


class TrainIterator:
    """Batches (dicts of numpy arrays) with checkpointable state and bad-sample counters.

    The state is the number of batches consumed (plus the counters): batch `k` is a pure
    function of `k`, so a pipeline restored with `set_state` starts a fresh grain iterator at
    batch `k` and yields exactly what the uninterrupted run would, whatever `num_workers` either
    run used.

    Attributes:
      steps_per_epoch: batches per epoch on this host. order, source: what it iterates.
      step: batches yielded so far (over all epochs).
      stats: counters: "batches", "rows", "skipped", "skipped/<reason>", "fully_masked",
        "bad_record" (records dropped when the json was read).
      last_info: the `BatchInfo` of the last batch.
    """

    def __init__(self, config: DataConfig, order: BatchOrder, source: Source):
        self.config, self.order, self.source = config, order, source
        self.steps_per_epoch = order.steps_per_epoch
        self.step = 0
        self._it = None
        self.stats: collections.Counter = collections.Counter(source.bad_counts)
        self.examples: dict[str, str] = {}  # counter key -> an example sample (this session only)
        self.last_info: BatchInfo | None = None

    def __iter__(self) -> "TrainIterator":
        return self

    def __len__(self) -> int:
        return self.order.num_steps

    def __next__(self) -> dict:
        if self.step >= self.order.num_steps:
            raise StopIteration
        if self._it is None:
            self._it = iter(make_dataset(self.config, self.order, self.source, self.step))
        arrays, info = next(self._it)
        self.step += 1
        self._count(info)
        self.last_info = info
        return arrays

    def _count(self, info: BatchInfo) -> None:
        self.stats["batches"] += 1
        self.stats["rows"] += len(info.ids)
        for row, sid, reason, message in info.skipped:
            self.stats["skipped"] += 1
            self.stats[f"skipped/{reason}"] += 1
            logger.warning("skipped sample %r (%s), an inert row stands in batch row %d; %d "
                           "skipped so far: %s", sid, reason, row, self.stats["skipped"], message)
            self.examples.setdefault(f"skipped/{reason}", message)
        reasons = info.masked_reasons or ("no_supervised_token",) * len(info.fully_masked)
        for sid, reason in zip(info.fully_masked, reasons):
            self.stats["fully_masked"] += 1
            self.stats[f"fully_masked/{reason}"] += 1
            self.examples.setdefault(f"fully_masked/{reason}", f"sample {sid!r}")
            logger.warning("sample %r has no supervised label (%s); %d so far", sid,
                           MASKED_REASONS.get(reason, reason), self.stats["fully_masked"])

    def summary(self) -> str:
        """The counters in words: rows read, skipped and fully masked by cause, with an example
        sample of each cause seen by this iterator."""
        parts = [f"{self.stats['rows']} rows read"]
        for key in sorted(k for k in self.stats if "/" in k and self.stats[k]):
            example = self.examples.get(key)
            parts.append(f"{key}: {self.stats[key]}" + (f" (e.g. {example})" if example else ""))
        if self.stats.get("bad_record"):
            parts.append(f"bad_record: {self.stats['bad_record']} (dropped when the data files were read)")
        return ", ".join(parts)

    def get_state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: the step, what it must match, and the counters."""
        return {"step": self.step, "steps_per_epoch": self.steps_per_epoch,
                "batch_size": self.config.batch_size, "seed": self.config.seed,
                "stats": dict(self.stats)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes from `get_state()` of an identically configured pipeline.

        Raises:
          ValueError: not such a state, or one saved with another batch size, seed or epoch
            length (the batches would not line up).
        """
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError(f"not a TrainIterator state (expected keys 'step', 'stats', ...): "
                             f"{state!r:.200}")
        mine = {"steps_per_epoch": self.steps_per_epoch, "batch_size": self.config.batch_size,
                "seed": self.config.seed}
        for key, value in mine.items():
            if key in state and state[key] != value:
                raise ValueError(f"iterator state has {key}={state[key]!r} but this pipeline has "
                                 f"{value!r}; resume with the configuration it was saved with")
        step = int(state["step"])
        if not 0 <= step <= self.order.num_steps:
            raise ValueError(f"iterator state step={step} outside 0..{self.order.num_steps}")
        self.close()
        self.step = step
        self.stats = collections.Counter(state.get("stats", {}))

    def close(self) -> None:
        """Stops worker processes (if any); iteration can go on (a new grain iterator starts)."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
        self._it = None


def make_train_pipeline(config: DataConfig) -> tuple[TrainIterator, int]:
    """The training batches of this host and the number of steps per epoch.

    Args:
      config: `DataConfig` (data paths, tokenizer, template, lengths, pixels, batch size, seed,
        epochs, grouping, hosts, workers, bad-sample policy).

    Returns:
      `(iterator, steps_per_epoch)`. The iterator yields `num_epochs * steps_per_epoch` dicts
      `{"input_ids", "attention_mask", "labels": [B, Lb] int32, "images": [B, P, 3, H, W] or
      [B, T, P, 3, H, W] float32}` and has `get_state()` / `set_state()`.
    """
    if config.source == "synthetic":
        raise ValueError("DataConfig.source='synthetic' is the trainer's built-in set, not a pipeline source")
    if not config.data_paths:
        raise ValueError("DataConfig.data_path is empty")
    if config.tokenizer_path is None or not os.fspath(config.tokenizer_path):
        raise ValueError("DataConfig.tokenizer_path is empty")
    source = open_source(config)
    order = make_order(config, source)
    logger.info("training data: %d records, %d steps per epoch of %d rows on host %d/%d",
                len(source), order.steps_per_epoch, config.batch_size, order.process_index,
                order.process_count)
    return TrainIterator(config, order, source), order.steps_per_epoch
