"""`DataConfig`: everything the training data pipeline needs, in one frozen dataclass.

It is also the `data:` section of the training configuration (`train/config.py`), so every data
setting has one owner; the fields marked *set by the trainer* are filled in from the run (batch,
model, hosts) and must be left at their defaults there."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Union

from llava_mini_jax.conversation import get_template
from llava_mini_jax.image_processing import DEFAULT_CONFIG, ImageProcessorConfig

PathLike = Union[str, os.PathLike]
BAD_SAMPLE_POLICIES = ("skip", "raise")
ASPECT_RATIOS = ("pad", "square")
SOURCES = ("auto", "json", "tfds", "synthetic")
# Filled in by the trainer from the run (train.data.llava_data_config), never set in its config.
SET_BY_TRAINER = ("vision_tokens_per_frame", "resolution_ratio", "image_processor", "batch_size", "num_epochs",
                  "gradient_accumulation_steps", "process_index", "process_count")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Settings of the training data pipeline (`make_train_pipeline`).

    Data:
      data_path: a LLaVA `.json` (list) or `.jsonl` file, a tuple of them (concatenated in
        order; stored as a tuple of strings either way), or a TFDS directory written by `tfds_builder.build_tfds` (the folder holding
        `dataset_info.json`).
      image_folder, video_folder: roots that a record's `image` / `video` path is relative to
        (unused for TFDS, which holds the bytes).
      source: "json", "tfds", or "auto" (a directory with `dataset_info.json` is TFDS); "synthetic"
        is the trainer's built-in image-question set (`synthetic_size` samples of
        `synthetic_classes` colours with `synthetic_noise` pixel noise; `prefetch` batches ahead),
        which this pipeline does not read.
      tfds_split: the TFDS split to read.

    Tokenization:
      tokenizer_path: Hugging Face tokenizer directory (`load_tokenizer`).
      template: "plain" (stage 1), "vicuna_v1" / "llava_v1" (stage 2, Vicuna),
        "llava_llama_3_1" (Llama-3.1; library decision D10).
      model_max_length: longest LLM sequence, vision tokens included; longer samples are bad
        samples (skipped), never truncated.
      vision_tokens_per_frame: tokens one image/frame puts into the LLM sequence (LLaVA-Mini: 1;
        the compressor's query count), used for the length check.

    Pixels:
      image_aspect_ratio: "pad" (expand to a square) or "square" (the reference's default: no
        padding, the centre crop cuts the long side).
      resolution_ratio: N; images give N*N + 1 parts when N > 1, in the reference's training
        order (pad the whole image, then split).
      image_processor: CLIP settings (crop size, mean, std).
      num_frames: frames per video (the reference trains on 8). Videos with fewer frames repeat
        frames (`get_seq_frames(T, num_frames)`) so every video batch has one shape; the
        reference would feed `T < 8` frames.

    Batching and order:
      batch_size: rows per batch on this host.
      seed, shuffle: the epoch order is a function of (seed, epoch) only.
      num_epochs: the iterator ends after this many epochs.
      group_by_modality_length: the reference's length-grouped sampler (megabatches of
        `process_count * gradient_accumulation_steps * batch_size` samples of one modality,
        sorted by length). Videos get their own megabatches (the reference groups them with
        text-only samples), see `order.py`.
      gradient_accumulation_steps: multiplies the megabatch size, as the reference's sampler.
      sampler_batch_size: the per-device batch of the reference's length-grouped sampler (the
        rows one GPU averages in one micro-step): each megabatch is dealt into chunks of this many
        rows, so the order does not depend on `process_count`. None: `batch_size` (one chunk per
        host).
      length_buckets: sequence lengths a batch is padded to (the smallest that fits); None gives
        powers of two from 64 up to `model_max_length`, or only `model_max_length` when
        `process_count > 1` (all hosts must agree on the shape of a step).
      process_index, process_count: this host and the number of hosts; None takes
        `jax.process_index()` / `jax.process_count()`.
      num_workers: grain worker processes (0: everything in this process). grain starts them
        with "spawn", so a script using workers needs an `if __name__ == "__main__":` guard.
      worker_buffer_size: batches each worker prepares ahead.
      read_threads: threads per process decoding samples (PIL releases the GIL).
      on_bad_sample: "skip" (an inert row takes its place in the batch and a counted warning is
        logged) or "raise".
    """

    data_path: Union[PathLike, tuple[PathLike, ...]] = ()
    tokenizer_path: Optional[PathLike] = None
    image_folder: PathLike = ""
    video_folder: PathLike = ""
    source: str = "auto"
    tfds_split: str = "train"
    template: str = "vicuna_v1"
    model_max_length: int = 2048
    vision_tokens_per_frame: int = 1
    image_aspect_ratio: str = "pad"
    resolution_ratio: int = 1
    image_processor: ImageProcessorConfig = DEFAULT_CONFIG
    num_frames: int = 8
    batch_size: int = 16
    seed: int = 0
    shuffle: bool = True
    num_epochs: int = 1
    group_by_modality_length: bool = False
    gradient_accumulation_steps: int = 1
    sampler_batch_size: Optional[int] = None
    length_buckets: Optional[tuple[int, ...]] = None
    process_index: Optional[int] = None
    process_count: Optional[int] = None
    num_workers: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 2
    on_bad_sample: str = "skip"
    prefetch: int = 4
    synthetic_size: int = 512
    synthetic_classes: int = 4
    synthetic_noise: float = 0.3

    def __post_init__(self):
        paths = self.data_path if isinstance(self.data_path, (tuple, list)) else (self.data_path,)
        object.__setattr__(self, "data_path", tuple(os.fspath(p) for p in paths if os.fspath(p)))
        if self.length_buckets is not None:
            object.__setattr__(self, "length_buckets", tuple(self.length_buckets))
        get_template(self.template)  # ValueError naming the known templates
        positive = ("model_max_length", "vision_tokens_per_frame", "resolution_ratio",
                    "num_frames", "batch_size", "num_epochs", "gradient_accumulation_steps",
                    "worker_buffer_size", "prefetch", "synthetic_size", "synthetic_classes")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DataConfig.{name}={value!r}: expected a positive int")
        if self.sampler_batch_size is not None and (not isinstance(self.sampler_batch_size, int)
                                                    or self.sampler_batch_size < 1):
            raise ValueError(f"DataConfig.sampler_batch_size={self.sampler_batch_size!r}: expected a "
                             f"positive int or None")
        for name in ("num_workers", "read_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"DataConfig.{name}={value!r}: expected an int >= 0")
        for name, value, allowed in (("on_bad_sample", self.on_bad_sample, BAD_SAMPLE_POLICIES),
                                     ("image_aspect_ratio", self.image_aspect_ratio, ASPECT_RATIOS),
                                     ("source", self.source, SOURCES)):
            if value not in allowed:
                raise ValueError(f"DataConfig.{name}={value!r}: expected one of {allowed}")
        if self.length_buckets is not None:
            buckets = tuple(self.length_buckets)
            if not buckets or any(not isinstance(b, int) or b < 1 for b in buckets):
                raise ValueError(f"DataConfig.length_buckets={self.length_buckets!r}: expected "
                                 f"positive ints")
            if max(buckets) < self.model_max_length:
                raise ValueError(f"DataConfig.length_buckets={buckets!r}: the largest must be >= "
                                 f"model_max_length={self.model_max_length}")
        count, index = self.process_count, self.process_index
        if count is not None and (count < 1 or index is None or not 0 <= index < count):
            raise ValueError(f"DataConfig.process_index={index!r}, process_count={count!r}: "
                             f"expected 0 <= process_index < process_count")

    @property
    def data_paths(self) -> tuple[str, ...]:
        """`data_path` as a tuple of strings."""
        paths = self.data_path if isinstance(self.data_path, (tuple, list)) else (self.data_path,)
        return tuple(os.fspath(p) for p in paths)

    def hosts(self) -> tuple[int, int]:
        """`(process_index, process_count)`, from jax when not set."""
        if self.process_count is not None:
            return int(self.process_index), int(self.process_count)
        import jax

        return jax.process_index(), jax.process_count()

    def buckets(self, process_count: int) -> tuple[int, ...]:
        """The sorted padding lengths (see `length_buckets`)."""
        if self.length_buckets is not None:
            buckets = tuple(sorted(set(self.length_buckets)))
            if process_count > 1 and len(buckets) > 1:
                raise ValueError(f"DataConfig.length_buckets={self.length_buckets!r} with "
                                 f"{process_count} hosts: hosts pick buckets independently, so "
                                 f"give a single length")
            return buckets
        if process_count > 1:
            return (self.model_max_length,)
        out, n = [], 64
        while n < self.model_max_length:
            out.append(n)
            n *= 2
        return tuple(out) + (self.model_max_length,)
