"""Tests for llava_mini_jax.data.synthetic."""

import json

from PIL import Image

from llava_mini_jax.data.records import check_record, record_kind
from llava_mini_jax.data.synthetic import write_synthetic_dataset
from llava_mini_jax.video import probe_video


def test_synthetic_dataset(tmp_path):
    path = write_synthetic_dataset(tmp_path, num_images=3, num_text=2, num_videos=1,
                                   video_frames=7, jsonl=True)
    records = [json.loads(line) for line in open(path)]
    assert sorted(r["id"] for r in records) == ["img0", "img1", "img2", "txt0", "txt1", "vid0"]
    for i, r in enumerate(records):
        check_record(r, i)
        kind = record_kind(r)
        if kind == "image":
            assert "<image>" in r["conversations"][0]["value"]
            Image.open(tmp_path / r["image"]).verify()
        if kind == "video":
            assert "<video>" in r["conversations"][0]["value"]
            assert probe_video(tmp_path / r["video"]).num_frames == 7
    again = write_synthetic_dataset(tmp_path / "b", num_images=3, num_text=2, num_videos=1,
                                    video_frames=7, jsonl=True)
    assert [json.loads(x) for x in open(again)] == records  # deterministic for a seed
