"""The benchmark registry: paper numbers, splits, and a reader for every entry."""

import pytest

from llava_mini_jax.eval import registry

PAPER_ROW = {
    "vqav2": 79.0,
    "gqa": 61.3,
    "vizwiz": 57.4,
    "scienceqa": 83.1,
    "textvqa": 58.5,
    "pope": 85.3,
    "mme": 1522.7,
    "mmbench": 71.6,
    "seed": 63.0,
    "llava_bench": 70.2,
    "mmvet": 37.2,
}


def test_paper_row_of_the_released_checkpoint():
    papers = {name: b.paper for name, b in registry.BENCHMARKS.items() if b.paper is not None}
    assert papers == PAPER_ROW


@pytest.mark.parametrize("name", sorted(registry.BENCHMARKS))
def test_entries_are_consistent(name):
    b = registry.BENCHMARKS[name]
    assert b.name == name and b.modality in ("image", "video")
    assert b.default_split in b.splits
    assert set(b.server_splits) <= set(b.splits)
    assert b.paper is None or b.paper_split in b.splits
    assert callable(b.read) and (b.score is not None or set(b.server_splits) == set(b.splits))
    assert b.layout


def test_judged_benchmarks_report_a_proxy_metric():
    judged = {n for n, b in registry.BENCHMARKS.items() if b.judged}
    assert judged == {"llava_bench", "mmvet", "msvd_qa", "msrvtt_qa", "activitynet_qa", "vcgbench"}
    assert all(registry.BENCHMARKS[n].headline.startswith("proxy") for n in judged)


def test_get_names_the_known_benchmarks():
    assert registry.get("gqa").title == "GQA"
    with pytest.raises(ValueError, match="'mvbench'"):
        registry.get("nope")
