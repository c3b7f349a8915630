"""Length-grouped sample order (`group_by_modality_length=True`, SPEC part B §8).

The reference (LLaVATrainer's sampler) shuffles the dataset, cuts it into megabatches of
`world_size * batch_size` samples, sorts each megabatch by length and deals it out to the
`world_size` replicas so that they get similar amounts of work. With modality grouping,
multimodal samples (length > 0) and language samples (length < 0) are grouped separately, so a
megabatch never mixes them.

Every quirk is reproduced:

* the last megabatch of each modality is dropped, even when full (up to `2 * world_size *
  batch_size` samples per epoch are never seen);
* all-negative lengths take the plain path, whose "descending" sort then puts the shortest
  (least negative) samples first;
* video samples count as language samples (`modality_lengths(..., videos_with_images=False)`).

Randomness comes from an explicit `randperm(n) -> permutation of range(n)` callable, called in the
reference's order (multimodal shuffle, language shuffle, megabatch shuffle; or one call for the
plain path), so recorded `torch.randperm` results can be replayed. The default is a seeded NumPy
generator: the same structure as the reference, different random numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

Randperm = Callable[[int], Sequence[int]]

IMAGE_TOKENS_ESTIMATE = 128  # `lengths` adds this to image samples, as the reference does


def numpy_randperm(seed: int = 0) -> Randperm:
    """A `randperm` drawing from `np.random.default_rng(seed)` (one generator for all calls)."""
    rng = np.random.default_rng(seed)
    return lambda n: rng.permutation(n).tolist()


def _word_count(sample: Mapping[str, Any]) -> int:
    return sum(len(turn["value"].split()) for turn in sample["conversations"])


def modality_lengths(samples: Sequence[Mapping[str, Any]],
                     videos_with_images: bool = False) -> list[int]:
    """Signed lengths: `+words` for image samples, `-words` for the others.

    `words` is the whitespace word count over all turns (`<image>` counts as a word).

    Args:
      samples: LLaVA records (`conversations`, optional `image` / `video`).
      videos_with_images: group video samples with image samples (positive lengths). The default
        False is the reference: only samples with an `image` key are positive, so videos are
        grouped with text-only samples.
    """
    multimodal_keys = ("image", "video") if videos_with_images else ("image",)
    out = []
    for sample in samples:
        words = _word_count(sample)
        out.append(words if any(k in sample for k in multimodal_keys) else -words)
    return out


def lengths(samples: Sequence[Mapping[str, Any]]) -> list[int]:
    """Unsigned lengths (used without modality grouping): words, `+128` for image samples."""
    return [_word_count(s) + (IMAGE_TOKENS_ESTIMATE if "image" in s else 0) for s in samples]


def _split_to_even_chunks(indices: list[int], lengths: Sequence[int],
                          num_chunks: int) -> list[list[int]]:
    """Deals `indices` (sorted longest first) out to `num_chunks` chunks of equal size.

    If the count is not divisible, chunk k is every `num_chunks`-th index from k. Otherwise each
    index goes to the chunk with the smallest total length so far (the first such), and a chunk
    that is full takes no more.
    """
    if len(indices) % num_chunks:
        return [indices[k::num_chunks] for k in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        k = totals.index(min(totals))
        chunks[k].append(index)
        totals[k] += lengths[index]
        if len(chunks[k]) == per_chunk:
            totals[k] = float("inf")
    return chunks


def length_grouped_indices(lengths: Sequence[int], batch_size: int, world_size: int,
                           randperm: Randperm) -> list[int]:
    """A permutation of `range(len(lengths))` grouped by length (one `randperm` call).

    Shuffle, cut into megabatches of `world_size * batch_size`, sort each by length descending
    (stable), split each into `world_size` chunks (`_split_to_even_chunks`), concatenate.
    """
    _check_sizes(batch_size, world_size)
    perm = _permutation(randperm, len(lengths))
    size = world_size * batch_size
    order = []
    for start in range(0, len(perm), size):
        megabatch = sorted(perm[start:start + size], key=lambda i: lengths[i], reverse=True)
        for chunk in _split_to_even_chunks(megabatch, lengths, world_size):
            order.extend(chunk)
    return order


def modality_length_grouped_indices(lengths: Sequence[int], batch_size: int, world_size: int,
                                    randperm: Randperm | None = None, seed: int = 0) -> list[int]:
    """The reference's `get_modality_length_grouped_indices` (SPEC B §8).

    Args:
      lengths: `[N]` signed lengths (`modality_lengths`); > 0 multimodal, < 0 language.
      batch_size: per-device batch size.
      world_size: number of replicas the reference would use (its trainer passes
        `world_size * gradient_accumulation_steps`).
      randperm: permutation source, called for the multimodal shuffle, the language shuffle and
        the megabatch shuffle, in that order (once in total when all lengths share a sign).
      seed: seeds the default `numpy_randperm` when `randperm` is None.

    Returns:
      Sample indices; with both modalities present, fewer than N (see module docstring).

    Raises:
      ValueError: a zero length, or non-positive sizes.
    """
    _check_sizes(batch_size, world_size)
    zero = [i for i, n in enumerate(lengths) if n == 0]
    if zero:
        raise ValueError(f"lengths must be non-zero; zero at indices {zero[:10]}")
    randperm = numpy_randperm(seed) if randperm is None else randperm
    if all(n > 0 for n in lengths) or all(n < 0 for n in lengths):
        return length_grouped_indices(lengths, batch_size, world_size, randperm)
    size = world_size * batch_size
    megabatches = []
    for sign in (1, -1):
        indices = [i for i, n in enumerate(lengths) if n * sign > 0]
        grouped = length_grouped_indices([abs(lengths[i]) for i in indices], batch_size,
                                         world_size, randperm)
        order = [indices[i] for i in grouped]
        cut = [order[s:s + size] for s in range(0, len(order), size)]
        megabatches.extend(cut[:-1])  # QUIRK: the last megabatch is dropped, even when full
    shuffled = _permutation(randperm, len(megabatches))
    return [i for k in shuffled for i in megabatches[k]]


def _check_sizes(batch_size: int, world_size: int) -> None:
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size={batch_size}, world_size={world_size}: both must be >= 1")


def _permutation(randperm: Randperm, n: int) -> list[int]:
    perm = [int(i) for i in randperm(n)]
    if sorted(perm) != list(range(n)):
        raise ValueError(f"randperm({n}) returned {perm[:10]}..., not a permutation of range({n})")
    return perm


def group_length_grouped_indices(lengths: Sequence[int], groups: Sequence[int], batch_size: int,
                                 world_size: int, randperm: Randperm) -> list[int]:
    """`modality_length_grouped_indices` for any number of groups (library extension).

    Megabatches of `world_size * batch_size` never mix groups. Each group (in ascending label
    order) is length-grouped on its own, cut into megabatches and loses its last megabatch (the
    reference's quirk, kept); then the megabatches are shuffled. With one group this is
    `length_grouped_indices`. With labels image < text and lengths made positive, it calls
    `randperm` exactly as `modality_length_grouped_indices` does for signed lengths.

    Args:
      lengths: `[N]` positive lengths.
      groups: `[N]` int group labels (e.g. image / text / video).
      batch_size, world_size, randperm: as `modality_length_grouped_indices`.
    """
    _check_sizes(batch_size, world_size)
    if len(groups) != len(lengths):
        raise ValueError(f"groups has {len(groups)} labels for {len(lengths)} lengths")
    bad = [i for i, n in enumerate(lengths) if n <= 0]
    if bad:
        raise ValueError(f"lengths must be positive; not at indices {bad[:10]}")
    labels = sorted(set(int(g) for g in groups))
    if len(labels) <= 1:
        return length_grouped_indices(lengths, batch_size, world_size, randperm)
    size = world_size * batch_size
    megabatches = []
    for label in labels:
        indices = [i for i, g in enumerate(groups) if g == label]
        grouped = length_grouped_indices([lengths[i] for i in indices], batch_size, world_size,
                                         randperm)
        order = [indices[i] for i in grouped]
        megabatches.extend([order[s:s + size] for s in range(0, len(order), size)][:-1])
    shuffled = _permutation(randperm, len(megabatches))
    return [i for k in shuffled for i in megabatches[k]]
