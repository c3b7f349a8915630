"""MME answer parsing and acc + acc+ per image pair."""

import pytest

from llava_mini_jax.eval import mme
from llava_mini_jax.eval.item import EvalItem


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("Yes.", "yes"),
        ("No, it is not.", "no"),
        ("Not really", "no"),  # 'not ' contains 'no' in its first 4 characters
        ("The answer is yes", "other"),  # only the first 4 characters are looked at
        ("Maybe", "other"),
        ("", "other"),
    ],
)
def test_parse_yes_no(text, expected):
    assert mme.parse_yes_no(text) == expected


def _pair(category, image, labels, texts):
    items = [
        EvalItem(
            f"{category}/{image}",
            f"q{k} Please answer yes or no.",
            image=f"/d/{category}/{image}",
            meta={"category": category, "label": label},
        )
        for k, label in enumerate(labels)
    ]
    return items, {item.key: text for item, text in zip(items, texts)}


def test_acc_plus_needs_both_questions_of_an_image():
    a, ans_a = _pair("artwork", "1.jpg", ["Yes", "No"], ["Yes", "No"])  # both right
    b, ans_b = _pair("artwork", "2.jpg", ["Yes", "No"], ["Yes", "Yes"])  # one right
    m = mme.score(a + b, {**ans_a, **ans_b})
    task = m["subtasks"]["artwork"]
    assert task["acc"] == pytest.approx(75.0)  # 3 of 4 questions
    assert task["acc_plus"] == pytest.approx(50.0)  # 1 of 2 images
    assert task["score"] == pytest.approx(125.0)
    assert m["perception"] == pytest.approx(125.0) and m["cognition"] == 0


def test_perception_and_cognition_totals():
    a, ans_a = _pair("OCR", "1.jpg", ["Yes", "No"], ["Yes", "No"])  # 200
    b, ans_b = _pair("count", "2.jpg", ["Yes", "No"], ["No", "Yes"])  # 0
    c, ans_c = _pair("code_reasoning", "3.png", ["Yes", "No"], ["yes", "The answer"])  # 50 + 0
    m = mme.score(a + b + c, {**ans_a, **ans_b, **ans_c})
    assert m["perception"] == pytest.approx(200.0)
    assert m["cognition"] == pytest.approx(50.0)


def test_unknown_subtask_is_named():
    items, answers = _pair("cartoons", "1.jpg", ["Yes"], ["Yes"])
    with pytest.raises(ValueError, match="cartoons"):
        mme.score(items, answers)
