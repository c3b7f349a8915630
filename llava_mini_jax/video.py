"""Video preprocessing: frame sampling, decoding and the model's frame pixels.

Per video the model receives float32 ``[T, P, 3, H, W]``: ``T`` sampled frames,
each nearest-resized to 336 x 336, split into ``P`` parts (1, or N*N + 1 for a
resolution ratio N > 1) and CLIP-processed without padding (SPEC part B §7).

Frame sampling follows the reference loaders (``get_seq_frames`` applied to a
frame count ``D`` chosen by a rule):

==========================  ====================================================
rule                        D (T = total frames, fps = average frame rate)
==========================  ====================================================
``"train"``                 ``min(T, 8)`` (``load_video_org(num_frm=8)``)
``"infer_1fps"``            ``min(T, int(T // fps))`` (run_llava_mini, egoschema,
                            run_inference_*; about one frame per second)
``"infer_1fps_cap1000"``    ``min(T, int(T // fps), 1000)`` (MVBench, MLVU)
==========================  ====================================================

Library decisions, differing from the reference:

* clips shorter than one second give ``D = 1`` at inference (the reference asks
  for 0 frames and dies with ZeroDivisionError);
* ``max_frames`` caps D further (for ``"train"`` it replaces the 8);
* the reference's ``load_video_org(num_frm=None)`` (unused) is
  ``rule="infer_1fps", max_frames=8`` except that it crashes below one second.

Decoding uses PyAV (the reference uses decord; for the lossless fixture clips
both give identical pixels). Frames are streamed: only the requested frames are
kept in memory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from llava_mini_jax.image_processing import (DEFAULT_CONFIG, ImageProcessorConfig, clip_preprocess, resize_and_crop,
                                             split_image)
from llava_mini_jax.optional_deps import require

PathLike = Union[str, os.PathLike]

RULES = ("train", "infer_1fps", "infer_1fps_cap1000")
TRAIN_NUM_FRAMES = 8
MVBENCH_FRAME_CAP = 1000
FRAME_SIZE = 336


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What frame sampling needs to know about a video.

    Attributes:
      num_frames: total frame count (the container's, else counted by decoding).
      fps: average frame rate (the stream's ``avg_frame_rate``, as decord's
        ``get_avg_fps``).
      height, width: frame size in pixels.
    """

    num_frames: int
    fps: float
    height: int
    width: int


def get_seq_frames(total_num_frames: int, desired_num_frames: int) -> list[int]:
    """The reference's frame picker: the middle of ``desired`` equal segments.

    ``seg = (total - 1) / desired``; frame ``i`` is
    ``(round(seg * i) + round(seg * (i + 1))) // 2`` with round-half-to-even.
    The last frame is never picked and indices repeat when ``desired`` is close
    to ``total`` (10, 10 -> 0 1 2 3 4 4 5 6 7 8).

    Raises:
      ValueError: ``desired_num_frames < 1`` (the reference raises
        ZeroDivisionError for 0) or ``total_num_frames < 1``.
    """
    if total_num_frames < 1:
        raise ValueError(f"total_num_frames must be >= 1, got {total_num_frames}")
    if desired_num_frames < 1:
        raise ValueError(f"desired_num_frames must be >= 1, got {desired_num_frames}")
    seg = (total_num_frames - 1) / desired_num_frames
    i = np.arange(desired_num_frames, dtype=np.float64)
    starts = np.rint(seg * i).astype(np.int64)
    ends = np.rint(seg * (i + 1)).astype(np.int64)
    return ((starts + ends) // 2).tolist()


def num_frames_for_rule(total_frames: int, fps: float, rule: str = "infer_1fps", max_frames: Optional[int] = None) -> int:
    """How many frames a rule samples (the table in the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if rule == "train":
        return min(total_frames, TRAIN_NUM_FRAMES if max_frames is None else max_frames)
    if not fps > 0 or not np.isfinite(fps):
        raise ValueError(f"fps must be a positive finite number for rule {rule!r}, got {fps}")
    desired = min(total_frames, int(total_frames // fps))  # Python float floor division, as the reference
    if rule == "infer_1fps_cap1000":
        desired = min(desired, MVBENCH_FRAME_CAP)
    if max_frames is not None:
        desired = min(desired, max_frames)
    return max(desired, 1)  # library decision: a clip under one second still gives one frame


def frame_indices(
    total_frames: int, fps: float, rule: str = "infer_1fps", max_frames: Optional[int] = None
) -> list[int]:
    """Frame indices the reference loaders request for a video.

    Args:
      total_frames: frames in the video.
      fps: its average frame rate (unused by ``"train"``).
      rule: ``"train"``, ``"infer_1fps"`` or ``"infer_1fps_cap1000"``.
      max_frames: optional cap on the count (replaces the 8 of ``"train"``).
    Returns:
      ``get_seq_frames(total_frames, D)``, D per the rule (at least 1).
    """
    return get_seq_frames(total_frames, num_frames_for_rule(total_frames, fps, rule, max_frames))


def _av():
    """PyAV, imported on first use (`import llava_mini_jax` works without it)."""
    return require("av", "video decoding (llava_mini_jax.video)")


def _open(path: PathLike):
    """Opens a container with clear errors; returns (container, first video stream)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {str(path)!r}")
    av = _av()
    try:
        container = av.open(os.fspath(path))
    except av.FFmpegError as e:
        raise ValueError(f"cannot open video {str(path)!r}: {e}") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"{str(path)!r} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _decoded_frames(container, stream, path: PathLike):
    """Yields the decoded frames in presentation order, mapping FFmpeg errors to ValueError."""
    av = _av()
    try:
        yield from container.decode(stream)
    except av.FFmpegError as e:
        raise ValueError(f"cannot decode video {str(path)!r}: {e}") from e


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, average fps and frame size of a video's first video stream.

    The count comes from the container header when it has one (mp4, avi, mov);
    otherwise (e.g. Matroska) the stream is decoded once to count the frames.
    """
    container, stream = _open(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise ValueError(f"{str(path)!r}: the video stream has no frame rate")
        num_frames = stream.frames
        if num_frames <= 0:
            num_frames = sum(1 for _ in _decoded_frames(container, stream, path))
        if num_frames <= 0:
            raise ValueError(f"{str(path)!r}: the video stream has no frames")
        return VideoInfo(
            num_frames=int(num_frames),
            fps=float(rate),
            height=int(stream.codec_context.height),
            width=int(stream.codec_context.width),
        )


def decode_video(path: PathLike, indices: Optional[Sequence[int]] = None) -> np.ndarray:
    """Decodes frames of a video as RGB: uint8 ``[T, H, W, 3]``.

    Args:
      path: the video file.
      indices: frame numbers (0-based, presentation order; repeats and any order
        allowed); None decodes every frame. Decoding stops after the last
        requested frame and only requested frames are kept.
    Raises:
      FileNotFoundError: no such file. ValueError: not a decodable video, or an
      index outside the decoded frames (the message gives the frame count).
    """
    if indices is not None:
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("decode_video: indices is empty; pass None to decode every frame")
        if min(indices) < 0:
            raise ValueError(f"decode_video: frame indices must be >= 0, got {min(indices)}")
    container, stream = _open(path)
    kept: dict[int, np.ndarray] = {}
    frames: list[np.ndarray] = []
    count = 0
    with container:
        wanted = None if indices is None else set(indices)
        last = None if indices is None else max(indices)
        for count, frame in enumerate(_decoded_frames(container, stream, path), start=1):
            i = count - 1
            if wanted is None:
                frames.append(frame.to_ndarray(format="rgb24"))
            elif i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
            if last is not None and i >= last:
                break
    if indices is None:
        if not frames:
            raise ValueError(f"{str(path)!r}: no frames could be decoded")
        return np.stack(frames)
    if last not in kept:
        raise ValueError(f"{str(path)!r}: frame index {last} requested but the video has {count} decoded frames")
    return np.stack([kept[i] for i in indices])


def resize_frames_nearest(frames: np.ndarray, size: Union[int, tuple[int, int]] = FRAME_SIZE) -> np.ndarray:
    """Nearest-neighbour resize as ``torch.nn.functional.interpolate(mode="nearest")``.

    Source index ``min(floor(dst * (in / out)), in - 1)`` with the scale and
    product in float32, as PyTorch computes it. No aspect-ratio preservation.

    Args:
      frames: ``[T, H, W, C]`` (any dtype; values are copied, not interpolated).
      size: output side, or ``(height, width)``.
    Returns:
      ``[T, size_h, size_w, C]``, same dtype.
    """
    if frames.ndim != 4:
        raise ValueError(f"frames must be [T, H, W, C], got shape {frames.shape}")
    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else size
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size must be positive, got {size!r}")

    def source_index(n_in: int, n_out: int) -> np.ndarray:
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(src, n_in - 1)

    rows = source_index(frames.shape[1], out_h)
    cols = source_index(frames.shape[2], out_w)
    return frames[:, rows][:, :, cols]


def frames_to_pixels(
    frames: np.ndarray, cfg: ImageProcessorConfig = DEFAULT_CONFIG, resolution_ratio: int = 1,
    as_uint8: bool = False,
) -> np.ndarray:
    """Already-resized uint8 frames ``[T, H, W, 3]`` -> float32 ``[T, P, 3, crop_h, crop_w]``.

    Each frame is split per ``resolution_ratio`` and CLIP-processed, no padding. ``as_uint8``:
    uint8 ``[T, P, crop_h, crop_w, 3]`` before normalisation (``image_processing.pixels_from_uint8``
    normalises them on the device to the same numbers).
    """
    step = resize_and_crop if as_uint8 else clip_preprocess
    out = []
    for frame in frames:
        parts = split_image(Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)), resolution_ratio)
        out.append(np.stack([step(p, cfg) for p in parts]))
    return np.stack(out)


def process_video(
    path: PathLike,
    cfg: ImageProcessorConfig = DEFAULT_CONFIG,
    resolution_ratio: int = 1,
    rule: str = "infer_1fps",
    max_frames: Optional[int] = None,
    frame_size: int = FRAME_SIZE,
    as_uint8: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """A video file -> (float32 ``[T, P, 3, H, W]`` pixels, or uint8 ``[T, P, H, W, 3]`` with
    ``as_uint8``; the frame indices used).

    Samples frames per ``rule`` / ``max_frames`` (see ``frame_indices``), resizes
    them to ``frame_size`` x ``frame_size`` (nearest, no aspect preservation; the
    reference hard-codes 336), splits each per ``resolution_ratio`` and applies
    CLIP processing without padding.
    """
    info = probe_video(path)
    indices = frame_indices(info.num_frames, info.fps, rule, max_frames)
    frames = resize_frames_nearest(decode_video(path, indices), frame_size)
    return frames_to_pixels(frames, cfg, resolution_ratio, as_uint8), indices


FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def process_frame_folder(
    path: PathLike,
    cfg: ImageProcessorConfig = DEFAULT_CONFIG,
    resolution_ratio: int = 1,
    rule: str = "infer_1fps",
    max_frames: Optional[int] = None,
    fps: float = 3.0,
    frame_size: int = FRAME_SIZE,
    as_uint8: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """A folder of frame images (sorted by name; e.g. MVBench's ``frames_fps3_hq`` tasks, extracted at
    ``fps``) treated as a video: same sampling rule, nearest resize and processing as
    ``process_video``. Only the sampled frames are read."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"frame folder {path!r} does not exist")
    names = sorted(f for f in os.listdir(path) if f.lower().endswith(FRAME_EXTENSIONS))
    if not names:
        raise ValueError(f"frame folder {path!r} holds no images ({', '.join(FRAME_EXTENSIONS)})")
    indices = frame_indices(len(names), fps, rule, max_frames)
    frames = np.stack([np.asarray(Image.open(os.path.join(path, names[i])).convert("RGB")) for i in indices])
    return frames_to_pixels(resize_frames_nearest(frames, frame_size), cfg, resolution_ratio, as_uint8), indices
