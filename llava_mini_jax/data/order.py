"""Which records form which batch on which host, epoch by epoch.

An epoch's **global order** is a list of record indices whose length is a multiple of the global
batch `G = process_count * batch_size`. It is cut into batches of `batch_size`; batch `j` goes to
host `j % process_count` (as the reference's trainer hands consecutive sampler batches to its
processes), so host `p` sees batches `p, p + W, p + 2W, ...`: the hosts' shards are disjoint and
together cover the order. Everything is a function of `(seed, epoch)`, so any step can be
rebuilt (resuming a run, worker processes).

Orders:

* `group_by_modality_length=True`: the reference's length-grouped sampler with megabatches of
  `process_count * gradient_accumulation_steps * batch_size`, dealt into chunks of
  `sampler_batch_size` rows (default `batch_size`). Without videos it is
  `modality_length_grouped_indices` itself (images vs text-only, its quirks included). With
  videos, **videos get their own megabatches** (`group_length_grouped_indices` with groups
  image / text / video); the reference groups videos with text-only samples, which here would
  put `[T, P, 3, H, W]` videos and `[P, 3, H, W]` zero images into one batch.
* otherwise a seeded permutation (the reference's random sampler). If the data has videos and
  non-videos, the permutation is split by that class and cut into global batches, whose order is
  then shuffled, so that no step mixes the two pixel shapes.

The tail that does not fill a global batch is dropped each epoch (as with `drop_last`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from llava_mini_jax.data.records import KIND_CODES
from llava_mini_jax.data.sampler import (group_length_grouped_indices,
                                         modality_length_grouped_indices)

_IMAGE, _VIDEO, _TEXT = KIND_CODES["image"], KIND_CODES["video"], KIND_CODES["text"]


def epoch_randperm(seed: int, epoch: int, shuffle: bool = True) -> Callable[[int], list[int]]:
    """`randperm(n)` for one epoch: seeded by `(seed, epoch)`, or the identity without shuffle."""
    if not shuffle:
        return lambda n: list(range(n))
    rng = np.random.default_rng([seed, epoch])
    return lambda n: rng.permutation(n).tolist()


class BatchOrder:
    """The batches of every epoch, for one host.

    Args:
      kinds: `[N]` kind codes (`records.KIND_CODES`). words: `[N]` word counts (> 0).
      batch_size: rows per host batch. process_index, process_count: this host, host count.
      seed, shuffle, group_by_modality_length, gradient_accumulation_steps,
      sampler_batch_size: see `DataConfig`.
      num_epochs: epochs in the stream.

    Raises:
      ValueError: fewer records than one global batch (after grouping).
    """

    def __init__(self, kinds: Sequence[int], words: Sequence[int], batch_size: int,
                 process_index: int = 0, process_count: int = 1, seed: int = 0,
                 shuffle: bool = True, group_by_modality_length: bool = False,
                 gradient_accumulation_steps: int = 1, num_epochs: int = 1,
                 sampler_batch_size: int | None = None):
        self.kinds = np.asarray(kinds, np.int8)
        self.words = np.asarray(words, np.int64)
        self.batch_size = batch_size
        self.process_index, self.process_count = process_index, process_count
        self.seed, self.shuffle = seed, shuffle
        self.group_by_modality_length = group_by_modality_length
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.num_epochs = num_epochs
        self.sampler_batch_size = sampler_batch_size or batch_size
        megabatch = process_count * gradient_accumulation_steps * batch_size
        if megabatch % self.sampler_batch_size:
            raise ValueError(f"sampler_batch_size={sampler_batch_size} does not divide the megabatch of "
                             f"{megabatch} rows")
        self._cache: dict[int, np.ndarray] = {}
        self.steps_per_epoch = len(self.epoch_order(0)) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.kinds)} records give no full global batch of "
                             f"{self.global_batch} (batch_size={batch_size} x "
                             f"{process_count} hosts) with group_by_modality_length="
                             f"{group_by_modality_length}")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.process_count

    @property
    def num_steps(self) -> int:
        """Batches this host yields over all epochs."""
        return self.steps_per_epoch * self.num_epochs

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global order of `epoch`: `[steps_per_epoch * global_batch]` record indices."""
        order = self._cache.get(epoch)
        if order is None:  # read threads may race here: both compute the same order
            order = np.asarray(self._raw_order(epoch), np.int64)
            order = order[:len(order) // self.global_batch * self.global_batch]
            cache = {} if len(self._cache) > 2 else dict(self._cache)
            cache[epoch] = order
            self._cache = cache
        return order

    def host_batches(self, epoch: int) -> np.ndarray:
        """`[steps_per_epoch, batch_size]` record indices of this host's batches in `epoch`."""
        batches = self.epoch_order(epoch).reshape(-1, self.batch_size)
        out = batches[self.process_index::self.process_count]
        if len(out) != self.steps_per_epoch:
            raise RuntimeError(f"epoch {epoch} has {len(out)} steps, epoch 0 had "
                               f"{self.steps_per_epoch}")
        return out

    def record_index(self, position: int) -> int:
        """Record index of the `position`-th sample of this host's stream (all epochs)."""
        per_epoch = self.steps_per_epoch * self.batch_size
        epoch, offset = divmod(int(position), per_epoch)
        step, row = divmod(offset, self.batch_size)
        return int(self.host_batches(epoch)[step, row])

    def _raw_order(self, epoch: int) -> list[int]:
        randperm = epoch_randperm(self.seed, epoch, self.shuffle)
        has_video = bool((self.kinds == _VIDEO).any())
        if self.group_by_modality_length:
            rows = self.sampler_batch_size
            ws = self.process_count * self.gradient_accumulation_steps * self.batch_size // rows
            if not has_video:
                signed = np.where(self.kinds == _IMAGE, self.words, -self.words).tolist()
                return modality_length_grouped_indices(signed, rows, ws, randperm)
            groups = np.select([self.kinds == _IMAGE, self.kinds == _TEXT], [0, 1], 2).tolist()
            return group_length_grouped_indices(self.words.tolist(), groups, rows, ws, randperm)
        perm = np.asarray(randperm(len(self.kinds)), np.int64)
        is_video = self.kinds[perm] == _VIDEO
        if not has_video or is_video.all():
            return perm.tolist()
        chunks = []
        for part in (perm[~is_video], perm[is_video]):
            usable = len(part) // self.global_batch * self.global_batch
            chunks.extend(part[:usable].reshape(-1, self.global_batch))
        if self.shuffle:
            chunks = [chunks[k] for k in randperm(len(chunks))]
        else:
            chunks.sort(key=lambda c: c[0])
        return np.concatenate(chunks).tolist() if chunks else []
