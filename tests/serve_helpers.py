"""What the engine and server tests share: one cache geometry (so compiled functions are reused
across modules), the warm-up shapes, and a small image (videos: `media.video_file`)."""
from __future__ import annotations

import numpy as np
from PIL import Image

GEOMETRY = dict(max_batch=8, max_context=128, min_bucket=64)  # prompt buckets 64 and 128 only
VIDEO_FRAMES = 2  # `video_file()` samples to 2 frames at 1 fps


def image(seed: int = 0, size=(30, 20)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def warm(engine, chat) -> None:
    """Text prompts in both buckets (64, 128); an image and a `VIDEO_FRAMES`-frame video in the first
    (each compile costs seconds on the CPU; the tests keep media prompts under 64 tokens)."""
    px = chat.load_pixels(image=image())
    engine.warmup([None])
    engine.warmup([px.shape, (VIDEO_FRAMES,) + px.shape], buckets=[64])
