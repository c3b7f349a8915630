"""The demo's data on disk: PNG images, LLaVA-format json for both stages, a held-out set, and the
TFDS ArrayRecord packing the training pipeline reads.

    out/data/images/{train,test}/000000.png
    out/data/stage1.json      captions, `plain` template ("<image>" -> "two red circles.")
    out/data/stage2.json      one question per (image, kind), `vicuna_v1` template
    out/data/test.json        held-out images, one question each (kinds in turn)
    out/data/tfds/llava_json/{stage1,stage2}/1.0.0/...   ArrayRecord shards (images as PNG bytes)
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from tqdm import tqdm

from .shapes import QUESTIONS, draw, question_kinds, random_scene


@dataclasses.dataclass(frozen=True)
class DemoData:
    root: str
    image_folder: str
    stage1_json: str
    stage2_json: str
    test_json: str
    captions: tuple[str, ...]


def _write_json(path: str, rows) -> str:
    with open(path, "w") as f:
        json.dump(rows, f)
    return path


def write_dataset(root: str, num_train: int = 6000, num_test: int = 400, size: int = 32, seed: int = 0,
                  progress: bool = True) -> DemoData:
    """Draws `num_train + num_test` images and writes the json files (the test images never train)."""
    rng = np.random.default_rng(seed)
    images = os.path.join(root, "images")
    for split in ("train", "test"):
        os.makedirs(os.path.join(images, split), exist_ok=True)
    stage1, stage2, test, captions = [], [], [], []
    kinds = list(QUESTIONS)
    bar = tqdm(total=num_train + num_test, desc="drawing images", unit="img", disable=not progress)
    for i in range(num_train):
        scene = random_scene(rng)
        rel = f"train/{i:06d}.png"
        draw(scene, rng, size).save(os.path.join(images, rel))
        captions.append(scene.caption())
        stage1.append({"id": f"cap-{i}", "image": rel,
                       "conversations": [{"from": "human", "value": "<image>"},
                                         {"from": "gpt", "value": scene.caption()}]})
        for kind in question_kinds(scene):
            stage2.append({"id": f"qa-{i}-{kind}", "image": rel,
                           "conversations": [{"from": "human", "value": "<image>\n" + QUESTIONS[kind]},
                                             {"from": "gpt", "value": scene.answer(kind)}]})
        bar.update()
    j = 0
    while len(test) < num_test:
        scene = random_scene(rng)
        kind = kinds[j % len(kinds)]
        j += 1
        if scene.answer(kind) is None:
            continue
        rel = f"test/{len(test):06d}.png"
        draw(scene, rng, size).save(os.path.join(images, rel))
        test.append({"id": f"test-{len(test)}", "image": rel, "kind": kind, "question": QUESTIONS[kind],
                     "answer": scene.answer(kind)})
        bar.update()
    bar.close()
    return DemoData(root=root, image_folder=images, stage1_json=_write_json(os.path.join(root, "stage1.json"), stage1),
                    stage2_json=_write_json(os.path.join(root, "stage2.json"), stage2),
                    test_json=_write_json(os.path.join(root, "test.json"), test), captions=tuple(captions))


def pack_tfds(data: DemoData) -> dict:
    """Both training sets as TFDS ArrayRecord datasets: `{"stage1": dir, "stage2": dir}`."""
    from llava_mini_jax.data.tfds_builder import build_tfds
    out = os.path.join(data.root, "tfds")
    return {name: build_tfds(path, out, name=name, image_folder=data.image_folder)
            for name, path in (("stage1", data.stage1_json), ("stage2", data.stage2_json))}
