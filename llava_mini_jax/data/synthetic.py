"""Synthetic LLaVA datasets (random images, tiny videos, random text) for tests and benchmarks."""

from __future__ import annotations

import json
import os
from typing import Union

import numpy as np
from PIL import Image
from tqdm import tqdm

_WORDS = ("the cat dog sits on a red mat near blue house with two small green trees under "
          "bright sky and people walk by river while birds fly over hills").split()


def _sentence(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS, int(rng.integers(low, high))).tolist())


def write_video(path: Union[str, os.PathLike], frames: np.ndarray, fps: int = 10) -> None:
    """Writes uint8 `[T, H, W, 3]` frames as a lossless FFV1 Matroska video."""
    import av

    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_synthetic_dataset(root: Union[str, os.PathLike], num_images: int = 16,
                            num_text: int = 8, num_videos: int = 0, *, seed: int = 0,
                            image_size: tuple[int, int] = (48, 40), video_frames: int = 10,
                            rounds: tuple[int, int] = (1, 3), jsonl: bool = False,
                            image_format: str = "mixed", progress: bool = False) -> str:
    """Writes `root/{images,videos}/` and `root/data.json[l]`; returns the json path.

    Records are interleaved at random; ids are `img<k>`, `txt<k>`, `vid<k>`. Image sizes vary
    by up to +-50% around `image_size` (W, H); every conversation has 1..`rounds[1]-1` rounds.
    `image_format`: "png", "jpg", or "mixed" (alternating).
    """
    if image_format not in ("png", "jpg", "mixed"):
        raise ValueError(f"image_format={image_format!r}: expected 'png', 'jpg' or 'mixed'")
    rng = np.random.default_rng(seed)
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)

    def conversation(tag: str | None) -> list[dict]:
        turns = []
        for r in range(int(rng.integers(*rounds))):
            question = _sentence(rng, 3, 12) + "?"
            if r == 0 and tag:
                question = f"{tag}\n{question}" if rng.random() < 0.5 else f"{question} {tag}"
            turns += [{"from": "human", "value": question},
                      {"from": "gpt", "value": _sentence(rng, 2, 30) + "."}]
        return turns

    records = []
    for k in tqdm(range(num_images), desc="synthetic images", disable=not progress):
        w, h = (max(8, int(s * rng.uniform(0.5, 1.5))) for s in image_size)
        ext = image_format if image_format != "mixed" else ("png" if k % 2 else "jpg")
        name = f"images/{k:05d}.{ext}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(root, name))
        records.append({"id": f"img{k}", "image": name, "conversations": conversation("<image>")})
    for k in range(num_text):
        records.append({"id": f"txt{k}", "conversations": conversation(None)})
    for k in range(num_videos):
        name = f"videos/{k:05d}.mkv"
        frames = rng.integers(0, 256, (video_frames, 24, 32, 3), dtype=np.uint8)
        write_video(os.path.join(root, name), frames)
        records.append({"id": f"vid{k}", "video": name, "conversations": conversation("<video>")})
    records = [records[i] for i in rng.permutation(len(records))]
    path = os.path.join(root, "data.jsonl" if jsonl else "data.json")
    with open(path, "w", encoding="utf-8") as f:
        if jsonl:
            f.writelines(json.dumps(r) + "\n" for r in records)
        else:
            json.dump(records, f)
    return path
