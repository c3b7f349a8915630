"""Procedurally drawn image-question data: shapes, colours, counts and positions.

Every image holds 1-3 copies of one shape in one colour, each in its own quadrant of the canvas.
Questions have one-word answers, so accuracy is exact match of the first word:

    colour    "What color is the shape?"                 red | green | blue | yellow   (chance 1/4)
    shape     "What shape is it?"                        circle | square | triangle    (chance 1/3)
    count     "How many shapes are there?"               one | two | three             (chance 1/3)
    position  "Is the shape on the left or the right?"   left | right  (single shapes) (chance 1/2)

Stage-1 captions describe the whole image ("two red circles on the left.").
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("one", "two", "three")
QUESTIONS = {
    "colour": "What color is the shape?",
    "shape": "What shape is it?",
    "count": "How many shapes are there?",
    "position": "Is the shape on the left or the right?",
}
CHANCE = {"colour": 1 / 4, "shape": 1 / 3, "count": 1 / 3, "position": 1 / 2}
BACKGROUND = (245, 245, 245)


@dataclasses.dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    count: int
    cells: tuple[int, ...]  # quadrants 0..3 (row-major)

    def answer(self, kind: str):
        """The one-word answer to a question kind (None: position of several shapes)."""
        if kind == "colour":
            return self.colour
        if kind == "shape":
            return self.shape
        if kind == "count":
            return COUNTS[self.count - 1]
        if kind == "position":
            return None if self.count != 1 else ("left" if self.cells[0] % 2 == 0 else "right")
        raise ValueError(f"question kind {kind!r}: expected one of {list(QUESTIONS)}")

    def caption(self) -> str:
        noun = self.shape + ("s" if self.count > 1 else "")
        where = ""
        if self.count == 1:
            where = " on the " + self.answer("position")
        return f"{COUNTS[self.count - 1]} {self.colour} {noun}{where}."


def random_scene(rng: np.random.Generator) -> Scene:
    count = int(rng.integers(1, 4))
    return Scene(colour=list(COLOURS)[int(rng.integers(len(COLOURS)))], shape=SHAPES[int(rng.integers(3))],
                 count=count, cells=tuple(int(c) for c in rng.permutation(4)[:count]))


def draw(scene: Scene, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """An RGB `size` x `size` image of the scene (small random jitter inside each quadrant)."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    pen = ImageDraw.Draw(img)
    r = max(2, size // 8)
    fill = COLOURS[scene.colour]
    for cell in scene.cells:
        cx = (cell % 2) * size // 2 + size // 4 + int(rng.integers(-2, 3))
        cy = (cell // 2) * size // 2 + size // 4 + int(rng.integers(-2, 3))
        if scene.shape == "circle":
            pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif scene.shape == "square":
            pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def question_kinds(scene: Scene) -> list[str]:
    return [k for k in QUESTIONS if scene.answer(k) is not None]


def corpus() -> list[str]:
    """Every word the demo's prompts and answers use (tokenizer training text)."""
    words = list(COLOURS) + list(SHAPES) + [s + "s" for s in SHAPES] + list(COUNTS) + ["left", "right", "the", "on"]
    return list(QUESTIONS.values()) + [" ".join(words)]
