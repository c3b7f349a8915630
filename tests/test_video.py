"""Tests for llava_mini_jax.video.

References: fixtures/pixels/video_indices.json (indices every reference loader
requests, and a get_seq_frames table), the decoded / resized frames of
pixels.npz, torch.nn.functional.interpolate, and videos encoded losslessly with
PyAV inside the tests. All comparisons are exact (integers and uint8 pixels;
float pixels through the fixture's exact normalisation LUT).
"""

import json
import pathlib

import av
import numpy as np
import pytest
import torch

from llava_mini_jax import video as vid

PIXELS = pathlib.Path(__file__).parent / "fixtures" / "pixels"
INDICES = json.loads((PIXELS / "video_indices.json").read_text())
VIDEOS = json.loads((PIXELS / "pixels_index.json").read_text())["videos"]


@pytest.fixture(scope="module")
def npz():
    with np.load(PIXELS / "pixels.npz") as z:
        return {k: z[k] for k in z.files}


def _lut_pixels(lut, frames):
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] through the fixture's normalisation LUT."""
    return np.stack([lut[c][frames[..., c]] for c in range(3)], axis=-3)


# --- frame sampling -----------------------------------------------------------------------------------


def test_get_seq_frames_table():
    rows = INDICES["get_seq_frames"]
    assert len(rows) == 231
    for row in rows:
        assert vid.get_seq_frames(row["total"], row["desired"]) == row["indices"], row


def test_get_seq_frames_hand_worked():
    # seg = 9/10 = 0.9; rounds of 0.9*i: 0 1 2 3 4 4 5 6 7 8 9 (4.5 -> 4, half to even)
    assert vid.get_seq_frames(10, 10) == [0, 1, 2, 3, 4, 4, 5, 6, 7, 8]
    # seg = 42/8 = 5.25: rounds 0 5 10 16 21 26 32 37 42 -> midpoints
    assert vid.get_seq_frames(43, 8) == [2, 7, 13, 18, 23, 29, 34, 39]


@pytest.mark.parametrize("total,desired", [(10, 0), (10, -1), (0, 1)])
def test_get_seq_frames_rejects_bad_counts(total, desired):
    with pytest.raises(ValueError, match="desired_num_frames|total_num_frames"):
        vid.get_seq_frames(total, desired)


@pytest.mark.parametrize(
    "fixture_rule,rule,max_frames",
    [
        ("train_num_frm8", "train", None),
        ("infer_1fps", "infer_1fps", None),
        ("infer_1fps_cap1000", "infer_1fps_cap1000", None),
        ("train_num_frm_none", "infer_1fps", 8),  # the unused load_video_org(num_frm=None)
    ],
)
def test_frame_indices_match_reference_loaders(fixture_rule, rule, max_frames):
    grid = INDICES["grid"]
    assert len(grid) == 127
    n_errors = 0
    for row in grid:
        total, fps = row["total_frames"], row["fps"]
        ref = row["rules"][fixture_rule]
        got = vid.frame_indices(total, fps, rule, max_frames)
        if ref["error"] is None:
            assert got == ref["indices"], (total, fps)
        else:
            # The reference asks for int(T // fps) = 0 frames and crashes; the library takes one frame.
            assert "ZeroDivisionError" in ref["error"] and int(total // fps) == 0, (total, fps)
            assert got == vid.get_seq_frames(total, 1), (total, fps)
            n_errors += 1
    assert n_errors == (0 if fixture_rule == "train_num_frm8" else 42)


def test_frame_indices_caps():
    assert vid.frame_indices(300, 10.0, "infer_1fps", max_frames=5) == vid.get_seq_frames(300, 5)
    assert vid.frame_indices(300, 10.0, "train", max_frames=3) == vid.get_seq_frames(300, 3)
    assert len(vid.frame_indices(36000, 1.0, "infer_1fps_cap1000")) == 1000
    assert len(vid.frame_indices(36000, 1.0, "infer_1fps")) == 36000 // 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(total_frames=10, fps=10.0, rule="eval"), "rule"),
        (dict(total_frames=10, fps=0.0), "fps"),
        (dict(total_frames=10, fps=float("nan")), "fps"),
        (dict(total_frames=0, fps=10.0), "total_frames"),
        (dict(total_frames=10, fps=10.0, max_frames=0), "max_frames"),
    ],
)
def test_frame_indices_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vid.frame_indices(**kwargs)


# --- decoding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", list(VIDEOS))
def test_probe_fixture_clips(clip):
    info = vid.probe_video(PIXELS / VIDEOS[clip]["file"])
    meta = VIDEOS[clip]
    assert (info.num_frames, info.fps, (info.height, info.width)) == (meta["frames"], meta["fps"], tuple(meta["size_hw"]))


@pytest.mark.parametrize("clip", list(VIDEOS))
def test_decode_fixture_clips(npz, clip):
    path = PIXELS / VIDEOS[clip]["file"]
    decoded = vid.decode_video(path)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, npz[f"{clip}.decoded"])
    np.testing.assert_array_equal(vid.decode_video(path, [5, 2, 5, 0]), decoded[[5, 2, 5, 0]])


@pytest.mark.parametrize("clip", list(VIDEOS))
def test_train_frames_and_pixels(npz, clip):
    path = PIXELS / VIDEOS[clip]["file"]
    info = vid.probe_video(path)
    indices = vid.frame_indices(info.num_frames, info.fps, "train")
    frames336 = vid.resize_frames_nearest(vid.decode_video(path, indices))
    np.testing.assert_array_equal(frames336, npz[f"{clip}.train8.frames336"])
    pixels, used = vid.process_video(path, rule="train")
    assert used == indices
    assert pixels.shape == (8, 1, 3, 336, 336) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels[:, 0], _lut_pixels(npz["normalisation_lut"], npz[f"{clip}.train8.frames336"]))


def test_inference_frames_and_hd_pixels(npz):
    path = PIXELS / "clip_10fps_43f.mkv"
    expected = npz["clip_10fps_43f.infer1fps.frames336"]
    indices = vid.frame_indices(43, 10.0, "infer_1fps")
    np.testing.assert_array_equal(vid.resize_frames_nearest(vid.decode_video(path, indices)), expected)
    pixels, used = vid.process_video(path, resolution_ratio=2)
    assert used == [5, 15, 26, 37] and pixels.shape == (4, 5, 3, 336, 336)
    np.testing.assert_array_equal(pixels[:, 4], _lut_pixels(npz["normalisation_lut"], expected))  # whole frame
    # block (0, 1): the 168x168 top-right quarter, bicubic-upscaled to 336 by the CLIP processor
    from llava_mini_jax.image_processing import clip_preprocess
    from PIL import Image

    quarter = Image.fromarray(np.ascontiguousarray(expected[2, :168, 168:]))
    np.testing.assert_array_equal(pixels[2, 1], clip_preprocess(quarter))


def test_uint8_frames_are_the_reference_frames(npz):
    """`as_uint8`: the frames (HD parts too) before normalisation, `[T, P, H, W, 3]`; normalised they are
    the float pixels."""
    path = PIXELS / "clip_10fps_43f.mkv"
    u8, used = vid.process_video(path, resolution_ratio=2, as_uint8=True)
    assert used == [5, 15, 26, 37] and u8.shape == (4, 5, 336, 336, 3) and u8.dtype == np.uint8
    np.testing.assert_array_equal(u8[:, 4], npz["clip_10fps_43f.infer1fps.frames336"])
    from llava_mini_jax.image_processing import normalize
    np.testing.assert_array_equal(normalize(u8), vid.process_video(path, resolution_ratio=2)[0])


def test_short_clip_gives_one_inference_frame():
    # 12 frames at 25 fps: the reference crashes (ZeroDivisionError); the library takes frame 5.
    pixels, used = vid.process_video(PIXELS / "clip_25fps_12f.mkv")
    assert used == [5] and pixels.shape == (1, 1, 3, 336, 336)


def test_decode_stops_after_last_requested_frame(monkeypatch):
    seen = []
    original = vid._decoded_frames

    def counting(container, stream, path):
        for frame in original(container, stream, path):
            seen.append(frame)
            yield frame

    monkeypatch.setattr(vid, "_decoded_frames", counting)
    vid.decode_video(PIXELS / "clip_10fps_43f.mkv", [3, 1])
    assert len(seen) == 4


def test_decode_errors(tmp_path):
    clip = PIXELS / "clip_25fps_12f.mkv"
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        vid.decode_video(tmp_path / "missing.mp4")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    with pytest.raises(ValueError, match="garbage.mp4"):
        vid.decode_video(tmp_path / "garbage.mp4")
    with pytest.raises(ValueError, match="garbage.mp4"):
        vid.probe_video(tmp_path / "garbage.mp4")
    with pytest.raises(ValueError, match="index 12 .* 12 decoded frames"):
        vid.decode_video(clip, [0, 12])
    with pytest.raises(ValueError, match=">= 0"):
        vid.decode_video(clip, [-1])
    with pytest.raises(ValueError, match="empty"):
        vid.decode_video(clip, [])


# --- nearest resize -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "in_hw,out",
    [((30, 40), 336), ((24, 32), 336), ((336, 336), 336), ((168, 100), 336), ((720, 1280), 336),
     ((481, 853), 336), ((7, 5), (13, 3)), ((1000, 3), (333, 7))],
)
def test_resize_frames_nearest_matches_torch(in_hw, out):
    frames = np.random.default_rng(sum(in_hw)).integers(0, 256, (2, *in_hw, 3), dtype=np.uint8)
    size = (out, out) if isinstance(out, int) else out
    ref = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=size, mode="nearest")
    ref = ref.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    got = vid.resize_frames_nearest(frames, out)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, ref)


def test_resize_frames_nearest_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\[T, H, W, C\]"):
        vid.resize_frames_nearest(np.zeros((4, 4, 3), np.uint8))


# --- videos encoded here ----------------------------------------------------------------------------------


def _reference_indices(total, fps, rule):
    """The reference loaders' arithmetic (SPEC B §7) written out, plus the library's one-frame floor."""
    desired = min(total, 8) if rule == "train" else min(total, int(total // fps))
    if rule == "infer_1fps_cap1000":
        desired = min(desired, 1000)
    desired = max(desired, 1)
    seg = (total - 1) / desired
    return [(int(np.round(seg * i)) + int(np.round(seg * (i + 1)))) // 2 for i in range(desired)]


ENCODINGS = [
    # (container, codec, pix_fmt, fps, frames)
    ("mkv", "ffv1", "bgr0", 5, 3),  # 0.6 s: no frame count in the header, decoded to count
    ("mkv", "ffv1", "bgr0", 4, 9),
    ("mov", "png", "rgb24", 3, 10),  # frame count in the header
    ("avi", "ffv1", "bgr0", 24, 30),
    ("mp4", "libx264rgb", "rgb24", 2, 7),  # lossless H.264 (qp 0)
]


@pytest.fixture(scope="module", params=ENCODINGS, ids=lambda e: f"{e[1]}-{e[3]}fps-{e[4]}f")
def encoded(request, tmp_path_factory):
    ext, codec, pix_fmt, fps, n = request.param
    frames = np.random.default_rng(n).integers(0, 256, (n, 22, 30, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("videos") / f"clip.{ext}"
    try:
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = 30, 22, pix_fmt
            if codec == "libx264rgb":
                stream.options = {"qp": "0"}
            for f in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            container.mux(stream.encode())
    except (av.FFmpegError, ValueError) as e:  # encoder not built into this PyAV
        pytest.skip(f"cannot encode {codec}: {e}")
    return path, frames, fps


def test_encoded_probe_and_decode(encoded):
    path, frames, fps = encoded
    info = vid.probe_video(path)
    assert (info.num_frames, info.fps, info.height, info.width) == (len(frames), fps, 22, 30)
    np.testing.assert_array_equal(vid.decode_video(path), frames)


@pytest.mark.parametrize("rule", vid.RULES)
def test_encoded_process_video(npz, encoded, rule):
    path, frames, fps = encoded
    pixels, used = vid.process_video(path, rule=rule)
    assert used == _reference_indices(len(frames), fps, rule)
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(frames[used]).permute(0, 3, 1, 2).float(), size=(336, 336), mode="nearest"
    )
    resized = resized.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    assert pixels.shape == (len(used), 1, 3, 336, 336)
    np.testing.assert_array_equal(pixels[:, 0], _lut_pixels(npz["normalisation_lut"], resized))
