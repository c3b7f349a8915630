"""Small media files the tests write: lossless video clips."""
from __future__ import annotations

import av
import numpy as np


def video_file(path, frames: int = 10, fps: int = 4, size=(24, 16)):
    """A lossless FFV1 clip at `path`: `frames` frames of width x height `size` at `fps` (10 at 4
    fps: 2.5 s, 2 frames at 1 fps), frame i a flat grey of level `(20 i) % 255`. Returns `path`."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "bgr0"
        for i in range(frames):
            arr = np.full((size[1], size[0], 3), (i * 20) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
