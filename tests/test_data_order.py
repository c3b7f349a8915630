"""Tests for llava_mini_jax.data.order: epoch orders, grouping, host shards."""

import pickle

import numpy as np
import pytest

from llava_mini_jax.data.order import BatchOrder, epoch_randperm
from llava_mini_jax.data.records import KIND_CODES
from llava_mini_jax.data.sampler import modality_length_grouped_indices

IMAGE, VIDEO, TEXT = KIND_CODES["image"], KIND_CODES["video"], KIND_CODES["text"]


def dataset(n_image=50, n_text=30, n_video=0, seed=0):
    rng = np.random.default_rng(seed)
    kinds = [IMAGE] * n_image + [TEXT] * n_text + [VIDEO] * n_video
    kinds = rng.permutation(kinds)
    return kinds, rng.integers(1, 200, len(kinds))


def is_video(kinds, idx):
    return kinds[np.asarray(idx)] == VIDEO


@pytest.mark.parametrize("group", [False, True])
@pytest.mark.parametrize("n_video", [0, 20])
def test_two_hosts_are_disjoint_and_cover_the_epoch(group, n_video):
    kinds, words = dataset(n_video=n_video)
    hosts = [BatchOrder(kinds, words, 4, p, 2, seed=5, group_by_modality_length=group)
             for p in range(2)]
    assert hosts[0].steps_per_epoch == hosts[1].steps_per_epoch > 0
    for epoch in range(2):
        shards = [h.host_batches(epoch) for h in hosts]
        a, b = (set(s.ravel().tolist()) for s in shards)
        assert not a & b
        assert a | b == set(hosts[0].epoch_order(epoch).tolist())
        assert len(a) + len(b) == len(hosts[0].epoch_order(epoch))
        # each global step (one batch per host) has one pixel shape
        for step in range(hosts[0].steps_per_epoch):
            rows = np.concatenate([s[step] for s in shards])
            assert len(set(is_video(kinds, rows).tolist())) == 1


def test_without_video_grouping_is_the_reference_sampler():
    kinds, words = dataset()
    order = BatchOrder(kinds, words, 3, 0, 2, seed=7, group_by_modality_length=True,
                       gradient_accumulation_steps=2)
    signed = [int(w) if k == IMAGE else -int(w) for k, w in zip(kinds, words)]
    want = modality_length_grouped_indices(signed, 3, 4, epoch_randperm(7, 0))
    assert order.epoch_order(0).tolist() == want[:len(want) // 6 * 6]


def test_grouped_batches_are_single_modality():
    kinds, words = dataset(n_video=25)
    order = BatchOrder(kinds, words, 4, 0, 1, seed=1, group_by_modality_length=True)
    for batch in order.host_batches(0):
        assert len(set(kinds[batch].tolist())) == 1


def test_ungrouped_order_is_a_permutation_without_videos():
    kinds, words = dataset()
    order = BatchOrder(kinds, words, 8, seed=3)
    o = order.epoch_order(0)
    assert len(o) == 80 and sorted(o.tolist()) == list(range(80))
    assert order.steps_per_epoch == 10


def test_epochs_differ_and_are_reproducible():
    kinds, words = dataset()
    a = BatchOrder(kinds, words, 4, seed=3, num_epochs=3)
    b = pickle.loads(pickle.dumps(a))
    assert a.epoch_order(0).tolist() != a.epoch_order(1).tolist()
    for e in range(3):
        assert a.host_batches(e).tolist() == b.host_batches(e).tolist()
    assert BatchOrder(kinds, words, 4, seed=4).epoch_order(0).tolist() != a.epoch_order(0).tolist()


def test_no_shuffle_keeps_the_file_order():
    kinds, words = dataset()
    order = BatchOrder(kinds, words, 8, shuffle=False, num_epochs=2)
    assert order.epoch_order(1).tolist() == list(range(80))
    assert [order.record_index(p) for p in (0, 9, 80, 85)] == [0, 9, 0, 5]


def test_record_index_walks_host_batches_across_epochs():
    kinds, words = dataset()
    order = BatchOrder(kinds, words, 4, 1, 2, seed=9, num_epochs=2)
    per_epoch = order.steps_per_epoch * 4
    stream = [order.record_index(p) for p in range(order.num_steps * 4)]
    assert stream[:per_epoch] == order.host_batches(0).ravel().tolist()
    assert stream[per_epoch:] == order.host_batches(1).ravel().tolist()


def test_steps_per_epoch_counts_dropped_tails():
    kinds, words = dataset(n_image=10, n_text=0)
    assert BatchOrder(kinds, words, 3).steps_per_epoch == 3  # 10 // 3
    assert BatchOrder(kinds, words, 3, 0, 2).steps_per_epoch == 1  # 10 // 6


def test_too_small_dataset_raises():
    kinds, words = dataset(n_image=3, n_text=0)
    with pytest.raises(ValueError, match=r"3 records give no full global batch of 8 \(batch_size=4 x 2"):
        BatchOrder(kinds, words, 4, 0, 2)
