"""Tests for llava_mini_jax.data.tfds_builder: ArrayRecord packing read back without tensorflow.

TFDS stores examples in the order of their hashed keys, so the TFDS version is compared with the
raw json reader by sample id.
"""

import json
import os
import pathlib
import sys

import numpy as np
import pytest

from llava_mini_jax.data import DataConfig, make_train_pipeline
from llava_mini_jax.data.features import SampleProcessor, Skipped
from llava_mini_jax.data.sources import INDEX_FILE, JsonSource, TfdsSource
from llava_mini_jax.data.synthetic import write_synthetic_dataset
from llava_mini_jax.data.tfds_builder import build_tfds
from llava_mini_jax.image_processing import ImageProcessorConfig

HERE = pathlib.Path(__file__).parent
VICUNA = HERE / "fixtures" / "preprocess" / "tokenizers" / "vicuna"
TINY = ImageProcessorConfig(shortest_edge=16, crop_height=16, crop_width=16)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    path = write_synthetic_dataset(root, num_images=10, num_text=6, num_videos=4, seed=2,
                                   video_frames=5)
    records = json.loads(pathlib.Path(path).read_text())
    records.append({"id": "gone", "image": "images/nope.png", "conversations": [
        {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]})
    records.append({"id": "bad", "conversations": [{"from": "gpt", "value": "only"}]})
    pathlib.Path(path).write_text(json.dumps(records))
    out = build_tfds(path, tmp_path_factory.mktemp("tfds"), name="syn", image_folder=root,
                     video_folder=root)
    return root, path, out


def test_builds_without_tensorflow(packed):
    _, _, out = packed
    assert "tensorflow" not in sys.modules
    files = os.listdir(out)
    assert any(".array_record-" in f for f in files)
    assert f"train.{INDEX_FILE}" in files
    assert out.endswith(os.path.join("llava_json", "syn", "1.0.0"))


def test_same_examples_by_id_as_the_raw_reader(packed):
    root, path, out = packed
    raw, tfds_source = JsonSource([path], root, root), TfdsSource(out)
    assert len(tfds_source) == len(raw) == 21  # "bad" is left out of both
    assert sorted(tfds_source.ids) == sorted(raw.ids)
    assert tfds_source.ids != raw.ids  # TFDS order is by hashed key
    proc = SampleProcessor(str(VICUNA), "vicuna_v1", 2048, image_processor=TINY, num_frames=4)
    raw_by_id = {sid: i for i, sid in enumerate(raw.ids)}
    for i, sid in enumerate(tfds_source.ids):
        a, b = raw[raw_by_id[sid]], tfds_source[i]
        assert a.record == b.record
        assert tfds_source.kinds[i] == raw.kinds[raw_by_id[sid]]
        assert tfds_source.words[i] == raw.words[raw_by_id[sid]]
        ea, eb = proc(a), proc(b)
        if sid == "gone":
            assert isinstance(ea, Skipped) and isinstance(eb, Skipped)
            assert ea.reason == eb.reason == "missing_media"
            continue
        assert isinstance(b.media, (bytes, type(None)))
        np.testing.assert_array_equal(ea.input_ids, eb.input_ids)
        np.testing.assert_array_equal(ea.labels, eb.labels)
        if ea.pixels is None:
            assert eb.pixels is None
        else:
            np.testing.assert_array_equal(ea.pixels, eb.pixels)


def test_pipeline_reads_either_version(packed):
    root, path, out = packed
    base = dict(tokenizer_path=VICUNA, image_processor=TINY, batch_size=2, num_frames=4,
                model_max_length=512, read_threads=0, process_index=0, process_count=1,
                group_by_modality_length=True)
    seen = {}
    for name, data_path in (("raw", path), ("tfds", out)):
        cfg = DataConfig(data_path=data_path, image_folder=root, video_folder=root, **base)
        it, steps = make_train_pipeline(cfg)
        batches = [(b, it.last_info) for b in it]
        assert len(batches) == steps
        seen[name] = {sid for _, info in batches for sid in info.ids}
        ids = it.source.ids
        assert seen[name] == {ids[i] for i in it.order.epoch_order(0)}
        kinds = [info.kind for _, info in batches]
        assert "video" in kinds and "image" in kinds
    assert seen["raw"] and seen["tfds"]
    # Same records, same per-kind counts: the same number of steps either way.
    assert len(seen["raw"]) == len(seen["tfds"])


def test_index_is_rebuilt_when_missing(packed, tmp_path):
    import shutil

    _, _, out = packed
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    os.remove(copy / f"train.{INDEX_FILE}")
    rebuilt = TfdsSource(str(copy))
    assert rebuilt.ids == TfdsSource(out).ids
    assert (copy / f"train.{INDEX_FILE}").is_file()


def test_unknown_split_names_the_splits(packed):
    with pytest.raises(ValueError, match=r"no split 'validation'; it has \['train'\]"):
        TfdsSource(packed[2], "validation")
