"""Tests for llava_mini_jax.data.config.DataConfig."""

import dataclasses

import pytest

from llava_mini_jax.data.config import DataConfig


def cfg(**kw):
    return DataConfig(**{"data_path": "d.json", "tokenizer_path": "tok", **kw})


def test_defaults_are_frozen_and_reference_like():
    c = cfg()
    assert (c.template, c.model_max_length, c.num_frames, c.on_bad_sample) == (
        "vicuna_v1", 2048, 8, "skip")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.batch_size = 3


@pytest.mark.parametrize("kw, message", [
    (dict(batch_size=0), r"batch_size=0: expected a positive int"),
    (dict(num_frames=1.5), r"num_frames=1.5: expected a positive int"),
    (dict(num_workers=-1), r"num_workers=-1: expected an int >= 0"),
    (dict(on_bad_sample="ignore"), r"on_bad_sample='ignore': expected one of \('skip', 'raise'\)"),
    (dict(image_aspect_ratio="anyres"), r"image_aspect_ratio='anyres'"),
    (dict(source="hdf5"), r"source='hdf5'"),
    (dict(length_buckets=(64, 0)), r"length_buckets=\(64, 0\): expected positive ints"),
    (dict(length_buckets=(64, 128)), r"the largest must be >= model_max_length=2048"),
    (dict(process_count=2, process_index=2), r"process_index=2, process_count=2"),
    (dict(process_count=2), r"process_index=None, process_count=2"),
])
def test_bad_values_name_the_field(kw, message):
    with pytest.raises(ValueError, match=message):
        cfg(**kw)


def test_buckets():
    assert cfg(model_max_length=300).buckets(1) == (64, 128, 256, 300)
    assert cfg(model_max_length=64).buckets(1) == (64,)
    assert cfg(model_max_length=2048).buckets(2) == (2048,)
    assert cfg(length_buckets=(4096, 1024)).buckets(1) == (1024, 4096)
    assert cfg(length_buckets=(2048,)).buckets(4) == (2048,)
    with pytest.raises(ValueError, match="with 2 hosts: hosts pick buckets independently"):
        cfg(length_buckets=(1024, 2048)).buckets(2)


def test_paths_and_hosts():
    assert cfg(data_path=("a.json", "b.jsonl")).data_paths == ("a.json", "b.jsonl")
    assert cfg().data_paths == ("d.json",)
    assert cfg(process_index=1, process_count=3).hosts() == (1, 3)
    assert cfg().hosts() == (0, 1)  # from jax: one process in the tests
