"""Tests for the sampler extension `group_length_grouped_indices` (any number of groups).

With two groups (images before text, lengths made positive) it must be the reference's
`get_modality_length_grouped_indices`: the recorded orders of fixtures/preprocess/sampler.json
are replayed through it.
"""

import json
import pathlib

import numpy as np
import pytest

from llava_mini_jax.data import sampler

FIXTURE = json.loads((pathlib.Path(__file__).parent / "fixtures" / "preprocess"
                      / "sampler.json").read_text())


def replay(calls):
    calls = iter(calls)

    def randperm(n):
        record = next(calls)
        assert record["n"] == n
        return record["perm"]
    return randperm, calls


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


def test_errors():
    with pytest.raises(ValueError, match="groups has 2 labels for 3 lengths"):
        sampler.group_length_grouped_indices([1, 2, 3], [0, 1], 1, 1, sampler.numpy_randperm())
    with pytest.raises(ValueError, match=r"positive; not at indices \[1\]"):
        sampler.group_length_grouped_indices([1, 0], [0, 1], 1, 1, sampler.numpy_randperm())
