"""Tests for llava_mini_jax.data.pipeline: the grain pipeline end to end on synthetic data."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from llava_mini_jax.data import DataConfig, make_train_pipeline
from llava_mini_jax.data.records import BadSampleError
from llava_mini_jax.data.synthetic import write_synthetic_dataset
from llava_mini_jax.image_processing import ImageProcessorConfig

HERE = pathlib.Path(__file__).parent
VICUNA = HERE / "fixtures" / "preprocess" / "tokenizers" / "vicuna"
TINY = ImageProcessorConfig(shortest_edge=16, crop_height=16, crop_width=16)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    path = write_synthetic_dataset(root, num_images=20, num_text=12, num_videos=8, seed=1,
                                   video_frames=6)
    return root, path


def config(data, **kw):
    root, path = data
    base = dict(data_path=path, image_folder=root, video_folder=root, tokenizer_path=VICUNA,
                image_processor=TINY, batch_size=4, model_max_length=256, num_frames=4, seed=3,
                read_threads=0, process_index=0, process_count=1)
    return DataConfig(**{**base, **kw})


def run(cfg, limit=None):
    it, steps = make_train_pipeline(cfg)
    out = []
    for batch in it:
        out.append((batch, it.last_info))
        if limit is not None and len(out) == limit:
            break
    it.close()
    return out, steps, it


def same(a, b):
    assert len(a) == len(b)
    for (x, ix), (y, iy) in zip(a, b):
        assert ix.ids == iy.ids
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_have_the_model_layout(data):
    batches, steps, it = run(config(data, num_epochs=1))
    assert len(batches) == steps == it.steps_per_epoch
    kinds = set()
    for batch, info in batches:
        b, width = batch["input_ids"].shape
        assert b == 4 and width in (64, 128, 256)
        assert batch["input_ids"].dtype == batch["labels"].dtype == np.int32
        assert batch["attention_mask"].shape == (4, width)
        n = batch["attention_mask"].sum(1)
        assert (batch["attention_mask"] == (np.arange(width) < n[:, None])).all()
        assert width == 64 or n.max() > width // 2  # the smallest bucket that fits
        assert ((batch["input_ids"] == -200).sum(1) <= 1).all()
        expected = (4, 4, 1, 3, 16, 16) if info.kind == "video" else (4, 1, 3, 16, 16)
        assert batch["images"].shape == expected and batch["images"].dtype == np.float32
        for row, sid in enumerate(info.ids):
            kind = sid[:3]
            kinds.add(kind)
            has_placeholder = (batch["input_ids"][row] == -200).any()
            assert has_placeholder == (kind != "txt")
            if kind == "txt":
                assert (batch["images"][row] == 0).all()
            assert (info.kind == "video") == (kind == "vid")
    assert kinds == {"img", "txt", "vid"}
    assert it.stats["batches"] == steps and it.stats["skipped"] == 0


@pytest.mark.parametrize("group", [False, True])
def test_resume_from_saved_state_gives_the_same_batches(data, group):
    cfg = config(data, num_epochs=2, group_by_modality_length=group)
    full, steps, _ = run(cfg)
    assert len(full) == 2 * steps
    it, _ = make_train_pipeline(cfg)
    for _ in range(steps + 1):  # across the epoch boundary
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    assert state["stats"]["batches"] == steps + 1
    resumed, _ = make_train_pipeline(cfg)
    resumed.set_state(state)
    rest = [(b, resumed.last_info) for b in resumed]
    same(rest, full[steps + 1:])
    assert resumed.stats["batches"] == 2 * steps


def test_workers_give_the_same_batches_and_resume(data):
    cfg = config(data, num_epochs=1)
    plain, _, _ = run(cfg)
    it, _ = make_train_pipeline(dataclasses.replace(cfg, num_workers=1, worker_buffer_size=1))
    try:
        first = [(next(it), it.last_info) for _ in range(3)]
        state = it.get_state()
    finally:
        it.close()
    same(first, plain[:3])
    it2, _ = make_train_pipeline(cfg)  # state from the worker pipeline, resumed without workers
    it2.set_state(json.loads(json.dumps(state)))
    same([(b, it2.last_info) for b in it2], plain[3:])


def test_two_hosts_see_disjoint_shards_covering_the_epoch(data):
    seen = []
    for p in range(2):
        batches, steps, it = run(config(data, process_index=p, process_count=2, batch_size=2,
                                        group_by_modality_length=True))
        assert steps == it.order.steps_per_epoch
        seen.append([sid for _, info in batches for sid in info.ids])
        assert all(b["input_ids"].shape[1] == 256 for b, _ in batches)  # one bucket across hosts
    a, b = set(seen[0]), set(seen[1])
    assert not a & b and len(a) == len(seen[0])
    ids = it.source.ids
    assert a | b == {ids[i] for i in it.order.epoch_order(0)}


def test_grouping_keeps_modalities_apart(data):
    batches, _, _ = run(config(data, group_by_modality_length=True, batch_size=2))
    for _, info in batches:
        assert len({sid[:3] for sid in info.ids}) == 1


def test_bad_samples_are_counted_and_never_crash(data, tmp_path, caplog):
    root, path = data
    records = [r for r in json.loads(pathlib.Path(path).read_text()) if "video" not in r]
    bad = [
        {"id": "gone", "image": "images/nope.png",
         "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
        {"id": "long", "conversations": [{"from": "human", "value": "word " * 400},
                                         {"from": "gpt", "value": "A"}]},
        {"id": "order", "conversations": [{"from": "human", "value": "Q"},
                                          {"from": "human", "value": "Q"}]},
        {"id": "mismatch", "conversations": [{"from": "human", "value": "a</s>b"},
                                             {"from": "gpt", "value": "A"}]},
    ]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(records[:12] + bad))
    batches, steps, it = run(config(data, data_path=str(p), shuffle=False, batch_size=5))
    assert steps == 3  # 15 good records (the out-of-order one is dropped when read)
    assert it.stats["bad_record"] == 1
    skipped = {sid for _, info in batches for _, sid, _, _ in info.skipped}
    assert {"gone", "long"} <= skipped
    assert it.stats["skipped/missing_media"] >= 1 and it.stats["skipped/too_long"] == 1
    assert it.stats["fully_masked"] == 1
    assert "skipped sample 'long' (too_long)" in caplog.text
    for batch, info in batches:  # inert rows carry no label
        for row, _, _, _ in info.skipped:
            assert (batch["labels"][row] == -100).all()
    with pytest.raises(BadSampleError):
        run(config(data, data_path=str(p), shuffle=False, batch_size=5, on_bad_sample="raise"))
    p2 = tmp_path / "bad_media_only.json"
    p2.write_text(json.dumps(records[:12] + bad[:1]))
    with pytest.raises(BadSampleError, match="'gone'"):  # raised in a worker, re-raised here
        run(config(data, data_path=str(p2), shuffle=False, batch_size=13, on_bad_sample="raise",
                   num_workers=1))


def test_llama31_template_through_the_pipeline(data):
    tok = HERE / "fixtures" / "preprocess" / "tokenizers" / "llama31_alwaysgen"
    batches, _, _ = run(config(data, tokenizer_path=tok, template="llava_llama_3_1",
                               model_max_length=512), limit=2)
    batch, info = batches[0]
    eot = 2009
    for row in range(4):
        labels = batch["labels"][row]
        supervised = labels[labels != -100]
        assert supervised[-1] == eot  # each answer ends with its <|eot_id|>
        assert batch["input_ids"][row, batch["attention_mask"][row].sum() - 1] == eot
    assert (batch["input_ids"][:, 0] == 2000).all()  # one <|begin_of_text|>


def test_resume_refuses_a_state_from_another_configuration(data):
    it, _ = make_train_pipeline(config(data))
    next(it)
    state = it.get_state()
    other, _ = make_train_pipeline(config(data, seed=4))
    with pytest.raises(ValueError, match="seed=3 but this pipeline has 4"):
        other.set_state(state)
    with pytest.raises(ValueError, match="not a TrainIterator state"):
        other.set_state({"grain": {}})
    with pytest.raises(ValueError, match="step=999 outside"):
        it.set_state({**state, "step": 999})


def test_iterator_ends_after_num_epochs(data):
    it, steps = make_train_pipeline(config(data, num_epochs=2))
    assert len(it) == 2 * steps
    assert sum(1 for _ in it) == 2 * steps
    with pytest.raises(StopIteration):
        next(it)


def test_batches_pass_the_models_input_checks(data):
    from llava_mini_jax.model import validate_inputs

    batches, _, _ = run(config(data, group_by_modality_length=True))
    for batch, _ in batches:
        validate_inputs(batch["input_ids"], batch["attention_mask"], batch["images"])


def test_stage1_captions_from_jsonl_with_the_plain_template(tmp_path):
    path = write_synthetic_dataset(tmp_path, num_images=8, num_text=0, rounds=(1, 2), jsonl=True)
    cfg = DataConfig(data_path=path, image_folder=tmp_path, tokenizer_path=VICUNA, template="plain",
                     image_processor=TINY, batch_size=4, read_threads=0, process_index=0,
                     process_count=1, model_max_length=128)
    batches, steps, it = run(cfg)
    assert steps == 2 and it.stats["skipped"] == 0
    for batch, _ in batches:
        assert (batch["input_ids"][:, :2] == [1, -200]).all()  # [BOS, image] then the caption
        assert (batch["labels"][:, :2] == -100).all() and (batch["labels"][:, 2] != -100).all()
        last = batch["attention_mask"].sum(1) - 1
        assert (batch["labels"][np.arange(4), last] != -100).all()  # the caption's "\n"
