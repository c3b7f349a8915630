"""Tests for llava_mini_jax.data.sources: json and TFDS random access (TFDS: test_data_tfds_builder)."""

import json
import pickle

import pytest

from llava_mini_jax.data.records import KIND_CODES
from llava_mini_jax.data.sources import JsonSource, RawSample, decode_tfds_example, is_tfds_dir

TURNS = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A b"}]


@pytest.fixture
def files(tmp_path):
    a = [{"id": "i", "image": "sub/x.png", "conversations": TURNS},
         {"id": "v", "video": "y.mp4", "conversations": TURNS},
         {"id": "bad", "conversations": []}]
    b = [{"id": "t", "conversations": TURNS}]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.jsonl").write_text(json.dumps(b[0]) + "\n")
    return tmp_path


def test_json_source_joins_media_roots(files):
    src = JsonSource([files / "a.json", files / "b.jsonl"], "/imgs", "/vids")
    assert len(src) == 3 and src.ids == ["i", "v", "t"]
    assert src.bad_counts == {"bad_record": 1}
    assert src.kinds.tolist() == [KIND_CODES[k] for k in ("image", "video", "text")]
    assert src.words.tolist() == [4, 4, 4]
    assert src[0] == RawSample(0, {"id": "i", "image": "sub/x.png", "conversations": TURNS},
                               "/imgs/sub/x.png")
    assert src[1].media == "/vids/y.mp4" and src[2].media is None and src[2].kind == "text"
    assert pickle.loads(pickle.dumps(src))[0] == src[0]


def test_json_source_raise_policy(files):
    with pytest.raises(ValueError, match="sample 'bad'"):
        JsonSource([files / "a.json"], on_bad_sample="raise")


def test_is_tfds_dir(files):
    assert not is_tfds_dir(str(files))
    (files / "dataset_info.json").write_text("{}")
    assert is_tfds_dir(str(files))
    assert not is_tfds_dir(str(files / "a.json"))


def test_decode_tfds_example():
    record = {"id": "i", "image": "x.png", "conversations": TURNS}
    ex = {"index": 4, "id": b"i", "record": json.dumps(record).encode(), "media": b"PNG",
          "media_error": b""}
    assert decode_tfds_example(2, ex) == RawSample(2, record, b"PNG", "")
    gone = dict(ex, media=b"", media_error=b"file not found")
    assert decode_tfds_example(2, gone) == RawSample(2, record, None, "file not found")
    text = dict(ex, record=json.dumps({"id": "t", "conversations": TURNS}), media=b"")
    assert decode_tfds_example(0, text).media is None
