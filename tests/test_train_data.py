"""train.data: the synthetic image-question set, global batches sharded over processes (the same
rows whatever the process count), resumable iterators, issue 5's pipeline config, and each row's place
in the sampler's order of the global batch (what the `reference` reduction groups by)."""
import numpy as np
import pytest

from llava_mini_jax.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from train.data import (GlobalBatchIndex, SyntheticImageQA, global_batches, global_row_index, llava_data_config,
                        split_micro_batches)
from train.tiny import tiny_model_config, tiny_train_config


def test_synthetic_samples():
    src = SyntheticImageQA(size=50, classes=4)
    counts = set()
    for i in range(50):
        s = src[i]
        ids, labels, mask = s["input_ids"], s["labels"], s["attention_mask"]
        n = int(mask.sum())
        assert ids[0] == src.BOS and ids[1] == IMAGE_TOKEN_INDEX and ids[n - 1] == src.EOS
        assert (mask[:n] == 1).all() and (mask[n:] == 0).all() and (labels[n:] == IGNORE_INDEX).all()
        sup = labels[labels != IGNORE_INDEX]
        assert sup[0] == src.answer(i) == ids[src.answer_position(i)]
        counts.add(len(sup))
        assert s["images"].shape == (1, 3, 16, 16)
    assert counts == {2, 3}  # the two question kinds supervise different token counts
    a, b = SyntheticImageQA(seed=0)[3], SyntheticImageQA(seed=1)[3]
    assert not np.array_equal(a["images"], b["images"])
    assert SyntheticImageQA().chance == pytest.approx(0.375)


@pytest.mark.parametrize("accum", [1, 2])
def test_global_batch_rows_do_not_depend_on_the_process_count(accum):
    one = GlobalBatchIndex(100, 8, accum, 0, 1, seed=3)
    two = [GlobalBatchIndex(100, 8, accum, p, 2, seed=3) for p in range(2)]
    for step in range(30):  # several epochs (12 steps each)
        r1 = one.rows(step).reshape(accum, -1)
        r2 = [t.rows(step).reshape(accum, -1) for t in two]
        np.testing.assert_array_equal(np.concatenate(r2, axis=1), r1)  # micro-batch a = concat over processes
    assert one.steps_per_epoch == 12
    e0 = np.concatenate([one.rows(s) for s in range(12)])
    e1 = np.concatenate([one.rows(s) for s in range(12, 24)])
    assert len(set(e0)) == 96 and not np.array_equal(e0, e1)  # no repeats in an epoch; reshuffled each epoch
    with pytest.raises(ValueError, match="not divisible"):
        GlobalBatchIndex(100, 8, 3, 0, 1)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchIndex(4, 8, 1, 0, 1)


def test_iterator_state_resumes_exactly():
    src = SyntheticImageQA(size=64)
    index = GlobalBatchIndex(64, 8, 1, 0, 1)
    it = global_batches(src, index, 20, num_threads=2)
    for _ in range(5):
        next(it)
    state = it.get_state()
    want = [next(it)["input_ids"] for _ in range(3)]
    again = global_batches(src, index, 20, num_threads=2)
    again.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(again)["input_ids"], w)


def test_split_micro_batches():
    b = {"input_ids": np.arange(24).reshape(8, 3), "images": np.zeros((8, 1, 3, 4, 4))}
    out = split_micro_batches(b, 4)
    assert out["input_ids"].shape == (4, 2, 3) and out["images"].shape == (4, 2, 1, 3, 4, 4)
    np.testing.assert_array_equal(out["input_ids"][1], [[6, 7, 8], [9, 10, 11]])
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps 3"):
        split_micro_batches(b, 3)


def test_llava_pipeline_config():
    cfg = tiny_train_config("unused.json", data={"source": "json", "data_path": ["a.json"], "image_folder": "/img",
                                                 "tokenizer_path": "/tok", "template": "plain", "model_max_length": 512},
                            train={"global_batch_size": 64, "grad_accum_steps": 4})
    d = llava_data_config(cfg, tiny_model_config(), process_index=1, process_count=4, num_epochs=2)
    assert d.batch_size == 16 and d.process_index == 1 and d.process_count == 4 and d.num_epochs == 2
    assert d.data_paths == ("a.json",) and d.template == "plain" and d.model_max_length == 512
    assert d.vision_tokens_per_frame == 1 and d.gradient_accumulation_steps == 1 and d.on_bad_sample == "skip"
    with pytest.raises(ValueError, match="set data.data_path"):
        llava_data_config(tiny_train_config("x.json", data={"source": "json"}), tiny_model_config(), 0, 1, 1)


def test_global_row_index_synthetic_layout():
    """Process p's rows (micro-batch-major) sit at `global_row_index` in the one-process order of the batch."""
    cfg = tiny_train_config("x.json", train={"global_batch_size": 8, "grad_accum_steps": 2})
    one = GlobalBatchIndex(64, 8, 2, 0, 1).rows(3)
    seen = []
    for p in range(2):
        index = global_row_index(cfg, p, 2)
        assert index.shape == (2, 2)
        np.testing.assert_array_equal(one[index].reshape(-1), GlobalBatchIndex(64, 8, 2, p, 2).rows(3))
        seen.extend(index.reshape(-1))
    assert sorted(seen) == list(range(8))


def test_llava_order_and_row_index_do_not_depend_on_the_process_count():
    """With the sampler's per-device batch set (`sampler_batch_size`, the rows of one reference mean), the
    length-grouped order of the global batch is the same for 1 and 2 processes, and process p's block of it
    sits at `global_row_index`. Without it the 2-process order differs (the megabatch is dealt to hosts)."""
    from llava_mini_jax.data.order import BatchOrder
    rng = np.random.default_rng(0)
    kinds = np.where(rng.random(40) < 0.7, 0, 2)  # image / text
    words = rng.integers(5, 80, 40)
    cfg = tiny_train_config("x.json", data={"source": "json"}, train={"global_batch_size": 8, "grad_accum_steps": 2})

    def order(count, index, sampler):
        return BatchOrder(kinds, words, 8 // count, index, count, seed=1, group_by_modality_length=True,
                          sampler_batch_size=sampler)
    one = order(1, 0, 2).host_batches(0)
    for p in range(2):
        host = order(2, p, 2).host_batches(0)
        index = global_row_index(cfg, p, 2)
        for step in range(len(one)):
            np.testing.assert_array_equal(one[step][index].reshape(-1), host[step])
    legacy_one, legacy_two = order(1, 0, None).host_batches(0), np.concatenate(
        [order(2, p, None).host_batches(0) for p in range(2)], axis=1)
    assert not np.array_equal(legacy_one, legacy_two)
    with pytest.raises(ValueError, match="does not divide the megabatch"):
        order(1, 0, 3)
