"""Training batches: a grain iterator of process-local numpy batches, and the synthetic set.

`make_pipeline(cfg, model_cfg, process_index, process_count) -> (iterator, steps_per_epoch)`.
The iterator yields, per optimizer step, this process's rows of the global batch as numpy
`{input_ids [R, L] int32, attention_mask [R, L] int32, labels [R, L] int32, images [R, P, 3, H, W]
float32}` with `R = global_batch_size / process_count`, ordered micro-batch-major (`R = A x r`,
micro-batch `a` is rows `a*r .. (a+1)*r`), and has `get_state()` / `set_state()` (grain) so a
checkpoint restores its position exactly.

`data.source: llava` is issue 5's pipeline (`llava_mini_jax.data.make_train_pipeline`);
`synthetic` is `SyntheticImageQA` below, batched by `global_batches`: each process reads only
the rows of its data shard, and the global batch of step `s` is the same rows whatever the number
of processes (process `p` takes rows `[a, p]` of the global batch seen as `[A, processes, r]`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Sequence

import grain.python as grain
import numpy as np

from llava_mini_jax.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX, LlavaMiniConfig

from .config import TrainConfig

log = logging.getLogger(__name__)


# -- synthetic image-question set -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SyntheticImageQA:
    """A tiny image-question set that a model must look at the image to answer.

    Image `i` is a flat colour (one of `classes`, a fixed random RGB direction) at one of two
    brightness levels, plus Gaussian pixel noise. The question asks either the colour or the
    brightness: `[BOS, IMAGE, filler*, Q, QMARK, ANSWER, (DOT,) EOS]`, padded to `length`; the
    answer tokens are supervised (ANSWER, EOS for colour; ANSWER, DOT, EOS for brightness, so
    rows supervise different token counts and the two loss reductions differ). Chance accuracy on
    ANSWER is `(1/classes + 1/2) / 2`.

    Token ids: 0 pad, 1 BOS, 2 EOS, 3/4 the colour/brightness question, 5 the question mark,
    6 filler, 7 DOT, `BRIGHT0 + b` brightness answers, `COLOR0 + c` colour answers.
    """

    size: int = 512
    classes: int = 4
    noise: float = 0.3
    image_size: int = 16
    channels: int = 3
    length: int = 10
    seed: int = 0

    PAD, BOS, EOS, Q_COLOR, Q_BRIGHT, QMARK, FILLER, DOT = 0, 1, 2, 3, 4, 5, 6, 7
    BRIGHT0, COLOR0 = 8, 10

    @property
    def vocab_needed(self) -> int:
        return self.COLOR0 + self.classes

    @property
    def chance(self) -> float:
        return (1 / self.classes + 1 / 2) / 2

    def __len__(self) -> int:
        return self.size

    def palette(self) -> np.ndarray:
        rng = np.random.default_rng(12345)
        colours = rng.normal(size=(self.classes, self.channels))
        return colours / np.linalg.norm(colours, axis=1, keepdims=True) * 1.5

    def attributes(self, i: int) -> tuple[int, int, int, int]:
        """`(colour, brightness, question kind, fillers)` of sample `i`."""
        rng = np.random.default_rng([self.seed, i])
        return (int(rng.integers(self.classes)), int(rng.integers(2)), int(rng.integers(2)), int(rng.integers(3)))

    def answer(self, i: int) -> int:
        colour, bright, kind, _ = self.attributes(i)
        return self.COLOR0 + colour if kind == 0 else self.BRIGHT0 + bright

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        colour, bright, kind, fill = self.attributes(i)
        rng = np.random.default_rng([self.seed, i, 1])
        level = (0.4, 1.0)[bright]
        pixels = self.palette()[colour][:, None, None] * level
        image = pixels + self.noise * rng.normal(size=(self.channels, self.image_size, self.image_size))
        question = (self.Q_COLOR, self.Q_BRIGHT)[kind]
        answer = [self.answer(i)] + ([self.DOT] if kind else []) + [self.EOS]
        prompt = [self.BOS, IMAGE_TOKEN_INDEX] + [self.FILLER] * fill + [question, self.QMARK]
        ids = prompt + answer
        n = len(ids)
        if n > self.length:
            raise ValueError(f"synthetic sample {i} has {n} tokens > length {self.length}")
        labels = [IGNORE_INDEX] * len(prompt) + answer
        pad = self.length - n
        return dict(input_ids=np.asarray(ids + [self.PAD] * pad, np.int32),
                    attention_mask=np.asarray([1] * n + [0] * pad, np.int32),
                    labels=np.asarray(labels + [IGNORE_INDEX] * pad, np.int32),
                    images=image[None].astype(np.float32))

    def answer_position(self, i: int) -> int:
        """Index of ANSWER in sample `i`'s `input_ids`."""
        return 4 + self.attributes(i)[3]


def synthetic_for(cfg: TrainConfig, model_cfg: LlavaMiniConfig) -> SyntheticImageQA:
    d = cfg.data
    src = SyntheticImageQA(size=d.synthetic_size, classes=d.synthetic_classes, noise=d.synthetic_noise,
                           image_size=model_cfg.vision.image_size, channels=model_cfg.vision.num_channels,
                           seed=d.seed)
    if src.vocab_needed > model_cfg.llm.vocab_size:
        raise ValueError(f"data.source=synthetic with {d.synthetic_classes} classes needs a vocabulary of "
                         f"{src.vocab_needed} ids; the model has {model_cfg.llm.vocab_size}")
    return src


# -- global batches from any indexable source -------------------------------------------------------
def collate(rows: Sequence[dict]) -> dict:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@dataclasses.dataclass(frozen=True)
class GlobalBatchIndex:
    """Which source rows make step `s`'s global batch, and which of them a process reads.

    Each epoch is a fresh permutation (`np.random.default_rng([seed, epoch])`); the last partial
    global batch of an epoch is dropped. Global batch `s` is seen as `[A, processes, r]`;
    process `p` reads `[:, p, :]` (flattened micro-batch-major).
    """

    num_records: int
    global_batch: int
    accum: int
    process_index: int
    process_count: int
    seed: int = 0

    def __post_init__(self):
        if self.global_batch % (self.accum * self.process_count):
            raise ValueError(f"global batch {self.global_batch} is not divisible by grad_accum_steps {self.accum} x "
                             f"{self.process_count} processes")
        if self.num_records < self.global_batch:
            raise ValueError(f"the data set has {self.num_records} samples, fewer than one global batch of "
                             f"{self.global_batch}")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_records // self.global_batch

    def rows(self, step: int) -> np.ndarray:
        epoch, k = divmod(int(step), self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
        batch = perm[k * self.global_batch:(k + 1) * self.global_batch]
        batch = batch.reshape(self.accum, self.process_count, -1)
        return batch[:, self.process_index].reshape(-1)


def global_batches(source, index: GlobalBatchIndex, num_steps: int, num_threads: int = 8,
                   prefetch: int = 4, transform: Callable[[dict], dict] | None = None):
    """A grain `DatasetIterator` over `num_steps` process-local batches of `source`."""
    def load(step):
        batch = collate([source[int(i)] for i in index.rows(step)])
        return transform(batch) if transform is not None else batch
    ds = grain.MapDataset.range(num_steps).map(load)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))


def make_pipeline(cfg: TrainConfig, model_cfg: LlavaMiniConfig, process_index: int, process_count: int,
                  num_steps: int | None = None, model_dir: str | None = None, reference_rows: int | None = None):
    """`(iterator, steps_per_epoch)` of process-local batches (see the module docstring).

    `num_steps` bounds the iterator (default: every step of `train.epochs`); `model_dir` is the
    tokenizer directory when `data.tokenizer_path` is not set; `reference_rows` (the rows of one
    reference mean, `trainer.check_batch_fits`) is the length-grouped sampler's per-device batch,
    as the PyTorch trainer's, so that the order does not depend on the number of processes."""
    t = cfg.train
    if cfg.data.source == "synthetic":
        src = synthetic_for(cfg, model_cfg)
        index = GlobalBatchIndex(len(src), t.global_batch_size, t.grad_accum_steps, process_index, process_count,
                                 seed=cfg.data.seed)
        spe = index.steps_per_epoch
        n = num_steps if num_steps is not None else int(np.ceil(t.epochs * spe))
        return global_batches(src, index, n, cfg.data.read_threads, cfg.data.prefetch), spe
    return make_llava_pipeline(cfg, model_cfg, process_index, process_count, num_steps, model_dir, reference_rows)


def llava_data_config(cfg: TrainConfig, model_cfg: LlavaMiniConfig, process_index: int, process_count: int,
                      num_epochs: int, model_dir: str | None = None, reference_rows: int | None = None):
    """The run's `data` section with the fields the trainer owns filled in: `batch_size` is this
    host's rows per optimizer step (all its micro-batches; the loop splits them), so one step's
    micro-batches share a padded length; the length-grouped megabatch is the global batch, as the
    reference's sampler; `reference_rows` (the rows of one reference mean) is the sampler's
    per-device batch; the tokenizer defaults to the model directory; pixels, tokens per frame and
    resolution ratio are the model's."""
    d, t = cfg.data, cfg.train
    if not d.data_path:
        raise ValueError(f"data.source={d.source}: set data.data_path (LLaVA json files or a TFDS directory)")
    tokenizer = d.tokenizer_path or model_dir
    if not tokenizer:
        raise ValueError("set data.tokenizer_path (or load the model from model.path / model.llm_path, whose "
                         "directory then holds the tokenizer)")
    if t.global_batch_size % process_count:
        raise ValueError(f"train.global_batch_size={t.global_batch_size} is not divisible by {process_count} "
                         "processes")
    return dataclasses.replace(
        d, tokenizer_path=tokenizer, image_processor=image_processor_config(model_cfg, model_dir),
        vision_tokens_per_frame=model_cfg.tokens_per_frame, resolution_ratio=model_cfg.resolution_ratio,
        batch_size=t.global_batch_size // process_count, num_epochs=num_epochs, gradient_accumulation_steps=1,
        sampler_batch_size=reference_rows, process_index=process_index, process_count=process_count)


def image_processor_config(model_cfg: LlavaMiniConfig, model_dir: str | None = None):
    """CLIP pixel settings: the model directory's `preprocessor_config.json` when it has one, else
    CLIP's defaults at the vision tower's image size. The crop must be that size."""
    import dataclasses as dc
    import os
    from llava_mini_jax.image_processing import DEFAULT_CONFIG, ImageProcessorConfig
    size = model_cfg.vision.image_size
    path = os.path.join(model_dir, "preprocessor_config.json") if model_dir else None
    if path and os.path.isfile(path):
        ip = ImageProcessorConfig.from_json(path)
        if (ip.crop_height, ip.crop_width) != (size, size):
            raise ValueError(f"{path} crops {ip.crop_height}x{ip.crop_width}, but the vision tower takes "
                             f"{size}x{size} images")
        return ip
    return dc.replace(DEFAULT_CONFIG, shortest_edge=size, crop_height=size, crop_width=size)


def make_llava_pipeline(cfg: TrainConfig, model_cfg: LlavaMiniConfig, process_index: int, process_count: int,
                        num_steps: int | None = None, model_dir: str | None = None, reference_rows: int | None = None):
    from llava_mini_jax.data import make_train_pipeline
    from llava_mini_jax.data.features import SampleProcessor
    from llava_mini_jax.tokenizer import check_vocabulary
    t = cfg.train
    epochs = max(1, math.ceil(t.epochs))
    data_cfg = llava_data_config(cfg, model_cfg, process_index, process_count, epochs, model_dir, reference_rows)
    it, spe = make_train_pipeline(data_cfg)  # names missing data files first
    try:
        check_vocabulary(SampleProcessor.from_config(data_cfg).tokenizer, model_cfg.llm.vocab_size)
    except BaseException:
        it.close()
        raise
    needed = num_steps if num_steps is not None else math.ceil(t.epochs * spe)
    if needed > epochs * spe:  # max_steps beyond the epochs: rebuild with enough epochs
        it.close()
        epochs = math.ceil(needed / spe)
        it, spe = make_train_pipeline(llava_data_config(cfg, model_cfg, process_index, process_count, epochs,
                                                        model_dir, reference_rows))
    return it, spe


def global_row_index(cfg: TrainConfig, process_index: int, process_count: int) -> np.ndarray:
    """`[A, r]` int32: the position, in the sampler's order of the global batch, of each of this
    process's rows as `split_micro_batches` arranges them (the `reference` loss reduction groups
    rows by it). Synthetic data: the global batch seen as `[A, processes, r]`, process `p` reads
    `[:, p]`; LLaVA data (`llava_mini_jax.data.order`): process `p` reads the `p`-th block of
    `G / processes` consecutive rows."""
    t = cfg.train
    a, g = t.grad_accum_steps, t.global_batch_size
    r = g // (a * process_count)
    if cfg.data.source == "synthetic":
        index = np.arange(g).reshape(a, process_count, r)[:, process_index]
    else:
        index = (process_index * (g // process_count) + np.arange(g // process_count)).reshape(a, r)
    return index.astype(np.int32)


def split_micro_batches(batch: dict, accum: int) -> dict:
    """`[A*r, ...]` -> `[A, r, ...]` (process-local rows, micro-batch-major)."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.shape[0] % accum:
            raise ValueError(f"batch[{k!r}] has {v.shape[0]} rows, not divisible by grad_accum_steps {accum}")
        out[k] = v.reshape((accum, v.shape[0] // accum) + v.shape[1:])
    return out

