"""train.data: the synthetic image-question set, global batches sharded over processes (the same
rows whatever the process count), resumable iterators, and issue 5's pipeline config."""
import numpy as np
import pytest

from llava_mini_jax.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from train.data import (GlobalBatchIndex, SyntheticImageQA, global_batches, llava_data_config,
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
