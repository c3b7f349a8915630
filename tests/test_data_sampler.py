"""Tests for llava_mini_jax.data.sampler.

The reference orders in fixtures/preprocess/sampler.json are reproduced exactly by replaying the
recorded `torch.randperm` results; small cases are worked out by hand. The extension
`group_length_grouped_indices` (any number of groups) must, with two groups (images before text,
lengths made positive), be the reference's `get_modality_length_grouped_indices`.
"""

import json
import pathlib

import numpy as np
import pytest

from llava_mini_jax.data import sampler

HERE = pathlib.Path(__file__).parent
PREPROCESS = HERE / "fixtures" / "preprocess"
FIXTURE = json.loads((PREPROCESS / "sampler.json").read_text())


def replay(calls):
    """A `randperm` that returns the recorded permutations in order, checking each size."""
    calls = iter(calls)

    def randperm(n):
        record = next(calls)
        assert record["n"] == n
        return record["perm"]
    return randperm, calls


def identity(n):
    return list(range(n))


@pytest.mark.parametrize("case", FIXTURE["cases"],
                         ids=[f"{c['name']}-gen{c['generator_seed']}" for c in FIXTURE["cases"]])
def test_reference_orders_replayed(case):
    randperm, remaining = replay(case["randperm_calls"])
    order = sampler.modality_length_grouped_indices(case["lengths"], case["batch_size"],
                                                    case["world_size"], randperm)
    assert order == case["order"]
    assert sorted(set(range(len(case["lengths"]))) - set(order)) == case["dropped"]
    assert next(remaining, None) is None  # every recorded call was used


def test_fixture_randperms_are_torchs():
    """The recorded permutations are torch's: global RNG per modality, the generator last."""
    torch = pytest.importorskip("torch")
    for case in FIXTURE["cases"]:
        torch.manual_seed(case["torch_manual_seed"])
        generator = None
        if case["generator_seed"] is not None:
            generator = torch.Generator().manual_seed(case["generator_seed"])
        for record in case["randperm_calls"]:
            g = generator if record["generator"] == "explicit" else None
            assert torch.randperm(record["n"], generator=g).tolist() == record["perm"]


def _samples():
    return json.loads((PREPROCESS / "samples.json").read_text())


def test_lengths_of_samples_json():
    samples = _samples()
    ids = [s["id"] for s in samples]
    assert sampler.modality_lengths(samples) == [
        FIXTURE["samples_json_modality_lengths"][i] for i in ids]
    assert sampler.lengths(samples) == [FIXTURE["samples_json_lengths"][i] for i in ids]


def test_videos_with_images_flag():
    samples = _samples()
    reference = sampler.modality_lengths(samples)
    grouped = sampler.modality_lengths(samples, videos_with_images=True)
    for sample, ref, new in zip(samples, reference, grouped):
        if "video" in sample:
            assert ref < 0 and new == -ref
        else:
            assert new == ref


def test_hand_worked_chunks():
    """Greedy dealing: 10->c0, 9->c1, 8->c1 (9 < 10; c1 full), 7->c0."""
    lengths = [7, 10, 8, 9]
    assert sampler.length_grouped_indices(lengths, 2, 2, identity) == [1, 0, 3, 2]
    # Not divisible by world_size: round robin over the sorted megabatch [1, 3, 2].
    assert sampler.length_grouped_indices([7, 10, 8, 9][1:], 3, 2, identity) == [0, 1, 2]
    assert sampler.length_grouped_indices([5, 6, 7], 3, 2, identity) == [2, 0, 1]


def test_all_negative_puts_the_shortest_first():
    """QUIRK: all-negative lengths sort "descending" as numbers, i.e. shortest text first."""
    order = sampler.modality_length_grouped_indices([-1, -5, -3, -2], 2, 1, identity)
    assert order == [0, 1, 3, 2]


def test_last_megabatch_of_each_modality_is_dropped():
    lengths = [10, 20, 30, 40, -1, -2, -3, -4]  # two full megabatches of 2 per modality
    order = sampler.modality_length_grouped_indices(lengths, 2, 1, identity)
    assert order == [1, 0, 5, 4]  # image [0, 1] and text [4, 5] kept; [2, 3], [6, 7] dropped


def test_default_numpy_randperm_groups_and_is_seeded():
    lengths = [(i % 7 + 1) * (1 if i % 3 else -1) for i in range(50)]
    a = sampler.modality_length_grouped_indices(lengths, 2, 2, seed=3)
    assert a == sampler.modality_length_grouped_indices(lengths, 2, 2, seed=3)
    assert a != sampler.modality_length_grouped_indices(lengths, 2, 2, seed=4)
    assert len(set(a)) == len(a)
    # 33 image samples: 8 full megabatches of 4 + 1 of 1 (dropped); 17 text: 4 + 1 (dropped).
    assert len(a) == 4 * (8 + 4)
    for start in range(0, len(a), 4):  # megabatches never mix modalities
        signs = {lengths[i] > 0 for i in a[start:start + 4]}
        assert len(signs) == 1


def test_errors():
    with pytest.raises(ValueError, match=r"zero at indices \[1\]"):
        sampler.modality_length_grouped_indices([3, 0, -2], 1, 1)
    with pytest.raises(ValueError, match="batch_size=0"):
        sampler.modality_length_grouped_indices([3, -2], 0, 1)
    with pytest.raises(ValueError, match=r"randperm\(2\)"):
        sampler.length_grouped_indices([3, 2], 1, 1, lambda n: [0, 0])


# -- group_length_grouped_indices: the extension to any number of groups ------------------------
MIXED = [c for c in FIXTURE["cases"] if min(c["lengths"]) < 0 < max(c["lengths"])]


@pytest.mark.parametrize("case", MIXED, ids=[f"{c['name']}-gen{c['generator_seed']}" for c in MIXED])
def test_two_groups_replay_the_reference(case):
    randperm, remaining = replay(case["randperm_calls"])
    lengths = [abs(n) for n in case["lengths"]]
    groups = [0 if n > 0 else 1 for n in case["lengths"]]
    order = sampler.group_length_grouped_indices(lengths, groups, case["batch_size"],
                                                 case["world_size"], randperm)
    assert order == case["order"]
    assert next(remaining, None) is None


def test_mixed_cases_exist():
    assert len(MIXED) >= 3


def test_three_groups_never_mix_within_a_megabatch():
    rng = np.random.default_rng(0)
    n = 300
    groups = rng.integers(0, 3, n).tolist()
    lengths = rng.integers(1, 100, n).tolist()
    bs, ws = 4, 2
    order = sampler.group_length_grouped_indices(lengths, groups, bs, ws, sampler.numpy_randperm(1))
    assert len(order) == len(set(order)) and len(order) % (bs * ws) == 0
    for start in range(0, len(order), bs * ws):
        assert len({groups[i] for i in order[start:start + bs * ws]}) == 1
    # each group loses exactly its last (possibly partial) megabatch
    for g in range(3):
        count = groups.count(g)
        kept = sum(1 for i in order if groups[i] == g)
        assert kept == (-(-count // (bs * ws)) - 1) * bs * ws


def test_one_group_is_the_plain_grouping():
    lengths = [5, 1, 4, 2, 3, 6]
    a = sampler.group_length_grouped_indices(lengths, [2] * 6, 2, 1, sampler.numpy_randperm(3))
    b = sampler.length_grouped_indices(lengths, 2, 1, sampler.numpy_randperm(3))
    assert a == b and sorted(a) == list(range(6))


def test_group_errors():
    with pytest.raises(ValueError, match="groups has 2 labels for 3 lengths"):
        sampler.group_length_grouped_indices([1, 2, 3], [0, 1], 1, 1, sampler.numpy_randperm())
    with pytest.raises(ValueError, match=r"positive; not at indices \[1\]"):
        sampler.group_length_grouped_indices([1, 0], [0, 1], 1, 1, sampler.numpy_randperm())
