"""EvalItem: keys, recorded prompts, image-or-video."""

import pytest

from llava_mini_jax.eval.item import EvalItem, item_key


def test_key_uses_id_text_and_recorded_prompt():
    a = EvalItem(7, "What?", image="/a.png")
    assert a.key == ("7", "What?") == item_key("7", "What?")
    b = EvalItem(7, "Other?", image="/a.png")
    assert a.key != b.key  # same id, different question (MME, TextVQA)
    sqa = EvalItem("1", "Q", image="/a.png", answer_prompt="<image>\nQ")
    assert sqa.prompt == "<image>\nQ" and sqa.key == ("1", "<image>\nQ")


def test_image_and_video_are_exclusive():
    with pytest.raises(ValueError, match="image or a video, not both"):
        EvalItem(1, "q", image="/a.png", video="/v.mp4")


def test_frozen():
    item = EvalItem(1, "q")
    with pytest.raises(AttributeError):
        item.query = "other"
