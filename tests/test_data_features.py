"""Tests for llava_mini_jax.data.features: raw sample -> ids, labels, pixels (or a skip).

The token oracle is the reference's own output (tests/fixtures/preprocess): the raw samples of
samples.json go through the training path (JsonSource -> SampleProcessor) and must give the
reference's ids and labels for every image and text-only sample of every expected file. Video
samples differ by design (D11): they hold one -200 and supervise the same tokens.
"""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from llava_mini_jax.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_mini_jax.conversation import tokenize_conversation
from llava_mini_jax.data.features import SampleProcessor, Skipped, tokenize_record
from llava_mini_jax.data.records import BadSampleError
from llava_mini_jax.data.sources import JsonSource, RawSample
from llava_mini_jax.image_processing import ImageProcessorConfig, normalize
from llava_mini_jax.video import frames_to_pixels

HERE = pathlib.Path(__file__).parent
PREPROCESS = HERE / "fixtures" / "preprocess"
PIXELS = HERE / "fixtures" / "pixels"
TINY = ImageProcessorConfig(shortest_edge=16, crop_height=16, crop_width=16)


def read(name):
    return json.loads((PREPROCESS / name).read_text(encoding="utf-8"))


def tokenizer_max_length(rel):
    return json.loads((PREPROCESS / rel / "tokenizer_config.json").read_text())["model_max_length"]


@pytest.fixture(scope="module")
def source():
    return JsonSource([PREPROCESS / "samples.json"], PIXELS, PIXELS)


def processor(tokenizer_rel, template, **kw):
    kw.setdefault("model_max_length", tokenizer_max_length(tokenizer_rel))
    kw.setdefault("image_processor", TINY)
    return SampleProcessor(str(PREPROCESS / tokenizer_rel), template, **kw)


# (expected file, template, tokenizer directory); llama31_correct with both fixture tokenizers
ORACLES = [
    ("expected_plain.json", "plain", None),
    ("expected_vicuna_v1.json", "vicuna_v1", None),
    ("expected_vicuna_v1_maxlen48.json", "vicuna_v1", None),
    ("expected_llama31_correct.json", "llava_llama_3_1", "tokenizers/llama31"),
    ("expected_llama31_correct.json", "llava_llama_3_1", "tokenizers/llama31_alwaysgen"),
]


@pytest.mark.parametrize("name, template, tok", ORACLES,
                         ids=[f"{n[9:-5]}-{(t or 'fixture').split('/')[-1]}" for n, _, t in ORACLES])
def test_training_path_matches_the_oracle(source, name, template, tok):
    data = read(name)
    tok = tok or data["meta"]["tokenizer"]
    proc = processor(tok, template)
    by_id = {source.ids[i]: i for i in range(len(source))}
    checked = {"image": 0, "text": 0, "video": 0, "too_long": 0}
    for sid, e in data["samples"].items():
        raw = source[by_id[sid]]
        try:
            ex = proc.build(raw)
        except BadSampleError as err:
            # model_max_length 48: the reference truncates or leaves these unchecked; we skip them.
            assert err.reason == "too_long" and "maxlen48" in name, (sid, err)
            assert len(e["input_ids"]) >= 48 or raw.kind == "video"
            checked["too_long"] += 1
            continue
        assert ex.sample_id == sid and ex.kind == raw.kind
        assert ex.input_ids.dtype == np.int32 and ex.labels.dtype == np.int32
        if raw.kind == "video" and template != "plain":
            # D11: the reference tokenizes <image> as text for videos; here it is the placeholder.
            assert (ex.input_ids == IMAGE_TOKEN_INDEX).sum() == 1, sid
            ours = tokenize_conversation(e["conversations"], proc.tokenizer, template, True)
            assert ex.input_ids.tolist() == ours.input_ids.tolist()
            if not e["fully_masked"]:
                want = [t for t in e["labels"] if t != IGNORE_INDEX]
                assert [t for t in ex.labels.tolist() if t != IGNORE_INDEX] == want, sid
        else:
            assert ex.input_ids.tolist() == e["input_ids"], sid
            assert ex.labels.tolist() == e["labels"], sid
            assert ex.fully_masked == (e["fully_masked"] or e.get("all_labels_ignored", False)), sid
        checked[raw.kind] += 1
    assert sum(checked.values()) == len(data["samples"])
    if "maxlen48" in name:  # every prompt of that file is longer than 48 tokens
        assert checked["too_long"] == len(data["samples"])
    else:
        assert checked["image"] >= 15 and checked["video"] >= 1 and not checked["too_long"]


def test_image_pixels_follow_the_reference_pad_path(source):
    proc = processor("tokenizers/vicuna", "vicuna_v1", image_processor=ImageProcessorConfig())
    raw = source[source.ids.index("cap_img_first")]  # rgb_97x61.png
    ex = proc.build(raw)
    want = np.load(PIXELS / "pixels.npz")["rgb_97x61.pad.float"]
    assert ex.pixels.shape == (1, 3, 336, 336) and ex.pixels.dtype == np.float32
    np.testing.assert_array_equal(ex.pixels[0], want)


@pytest.mark.parametrize("image", ["rgb_97x61", "pal_120x80"])
def test_hd_training_order_pads_then_splits(image):
    """Training HD parts are the reference's `__getitem__` parts, not the inference parts."""
    proc = processor("tokenizers/vicuna", "vicuna_v1", image_processor=ImageProcessorConfig(),
                     resolution_ratio=2)
    record = {"id": image, "image": f"{image}.png",
              "conversations": [{"from": "human", "value": "<image>\nQ"},
                                {"from": "gpt", "value": "A"}]}
    ex = proc.build(RawSample(0, record, str(PIXELS / f"{image}.png")))
    assert ex.pixels.shape == (5, 3, 336, 336)
    for k in range(5):
        expected = {mode: normalize(np.asarray(Image.open(
            PIXELS / "expected" / f"{image}.hd2.pad.{mode}.part{k}.png").convert("RGB")))
            for mode in ("train", "infer")}
        np.testing.assert_array_equal(ex.pixels[k], expected["train"])
        if k < 4:  # the blocks differ between the orders; the whole image (part 4) does not
            assert not np.array_equal(ex.pixels[k], expected["infer"])


def test_video_pixels_are_the_reference_training_frames(source):
    proc = processor("tokenizers/vicuna", "vicuna_v1", image_processor=ImageProcessorConfig())
    ex = proc.build(source[source.ids.index("cap_video")])  # clip_10fps_43f.mkv
    frames = np.load(PIXELS / "pixels.npz")["clip_10fps_43f.train8.frames336"]
    assert ex.kind == "video" and ex.pixels.shape == (8, 1, 3, 336, 336)
    np.testing.assert_array_equal(ex.pixels, frames_to_pixels(frames))


def test_video_from_bytes_equals_video_from_file(source):
    proc = processor("tokenizers/vicuna", "vicuna_v1")
    raw = source[source.ids.index("vid_tag_last")]
    packed = RawSample(raw.index, raw.record, pathlib.Path(raw.media).read_bytes())
    np.testing.assert_array_equal(proc.build(raw).pixels, proc.build(packed).pixels)


def test_short_video_repeats_frames():
    """A 12-frame clip gives 16 frames when 16 are asked for (repeats), 8 by default."""
    record = {"id": "v", "video": "clip_25fps_12f.mkv",
              "conversations": [{"from": "human", "value": "<video>\nQ"},
                                {"from": "gpt", "value": "A"}]}
    raw = RawSample(0, record, str(PIXELS / "clip_25fps_12f.mkv"))
    assert processor("tokenizers/vicuna", "vicuna_v1").build(raw).pixels.shape[0] == 8
    ex = processor("tokenizers/vicuna", "vicuna_v1", num_frames=16).build(raw)
    assert ex.pixels.shape == (16, 1, 3, 16, 16)
    assert np.array_equal(ex.pixels[1], ex.pixels[2])  # get_seq_frames(12, 16) = 0, 1, 1, 2, ...


def test_text_only_sample_has_no_pixels_and_no_placeholder(source):
    ex = processor("tokenizers/vicuna", "vicuna_v1").build(
        source[source.ids.index("txt_with_image_tag_text")])
    assert ex.pixels is None and ex.kind == "text"
    assert not (ex.input_ids == IMAGE_TOKEN_INDEX).any()  # the literal <image> stays text


def test_tokenize_record_video_is_d11():
    record = {"video": "v.mp4", "conversations": [{"from": "human", "value": "Q <video>"},
                                                  {"from": "gpt", "value": "A"}]}
    tok = processor("tokenizers/vicuna", "vicuna_v1").tokenizer
    out = tokenize_record(record, tok, "vicuna_v1")
    assert out.prompt.count("<image>\nQ") == 1
    assert (out.input_ids == IMAGE_TOKEN_INDEX).sum() == 1


# ------------------------------------------------------------------------------------------------
# Bad samples
# ------------------------------------------------------------------------------------------------
def image_record(sid, image="x.png", question="<image>\nWhat is it?", answer="A thing."):
    return {"id": sid, "image": image, "conversations": [{"from": "human", "value": question},
                                                         {"from": "gpt", "value": answer}]}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    Image.new("RGB", (20, 30), (1, 2, 3)).save(d / "ok.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
    return d


@pytest.mark.parametrize("record, media_name, reason", [
    (image_record("missing"), "nope.png", "missing_media"),
    (image_record("corrupt"), "corrupt.png", "corrupt_media"),
    ({"id": "cv", "video": "corrupt.mp4", "conversations": [
        {"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "A"}]},
     "corrupt.mp4", "corrupt_media"),
    (image_record("long", answer="word " * 200), "ok.png", "too_long"),
    (image_record("two", answer="see <image>"), "ok.png", "too_many_images"),
    ({"id": "plain_text", "conversations": [{"from": "human", "value": "Q"},
                                            {"from": "gpt", "value": "A"}]}, None,
     "bad_tokenization"),
])
def test_bad_samples_are_skipped_or_raise(media, record, media_name, reason):
    template = "plain" if record["id"] == "plain_text" else "vicuna_v1"
    raw = RawSample(3, record, None if media_name is None else str(media / media_name))
    skip = processor("tokenizers/vicuna", template, model_max_length=64)
    out = skip(raw)
    assert isinstance(out, Skipped) and out.reason == reason and out.sample_id == record["id"]
    assert out.index == 3 and out.kind == raw.kind
    strict = processor("tokenizers/vicuna", template, model_max_length=64, on_bad_sample="raise")
    with pytest.raises(BadSampleError, match=repr(record["id"])) as info:
        strict(raw)
    assert info.value.reason == reason


def test_length_check_counts_vision_tokens(media):
    raw = RawSample(0, image_record("x"), str(media / "ok.png"))
    n = len(processor("tokenizers/vicuna", "vicuna_v1").build(raw).input_ids)
    assert processor("tokenizers/vicuna", "vicuna_v1", model_max_length=n).build(raw)
    with pytest.raises(BadSampleError, match=f"{n + 63} LLM tokens"):
        processor("tokenizers/vicuna", "vicuna_v1", model_max_length=n,
                  vision_tokens_per_frame=64).build(raw)


def test_packing_error_is_missing_media():
    raw = RawSample(0, image_record("gone"), None, media_error="file not found when packing")
    out = processor("tokenizers/vicuna", "vicuna_v1")(raw)
    assert isinstance(out, Skipped) and out.reason == "missing_media"
    assert "when packing" in out.message
