"""POPE answer parsing and per-split metrics."""

import pytest

from llava_mini_jax.eval import pope
from llava_mini_jax.eval.item import EvalItem


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("No.", "no"),
        ("no", "no"),
        ("Yes, there is a dog in the image.", "yes"),
        ("There is not a dog.", "no"),  # 'not' is a no-word
        ("Yes. There is no cat.", "yes"),  # only the first sentence counts
        ("Yes, no doubt", "no"),  # 'no' anywhere in the first sentence
        ("NO", "yes"),  # reference quirk: only 'No', 'no', 'not'
        ("Nope", "yes"),
        ("", "yes"),
        ("There is no, dog", "no"),  # commas are dropped before splitting
    ],
)
def test_parse_yes_no(text, expected):
    assert pope.parse_yes_no(text) == expected


def test_binary_metrics_hand_worked():
    labels = ["yes", "yes", "no", "no", "yes"]
    preds = ["yes", "no", "no", "yes", "yes"]
    m = pope.binary_metrics(preds, labels)
    # TP=2 (0, 4), FN=1 (1), TN=1 (2), FP=1 (3)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 5)


def test_binary_metrics_no_yes_predicted_is_zero_not_an_error():
    m = pope.binary_metrics(["no", "no"], ["yes", "no"])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.0, 0.0, 0.0, 0.5)


def test_score_per_split_and_mean():
    def item(i, category, label):
        return EvalItem(i, f"Is there a thing {i}?", meta={"category": category, "label": label})

    items = [
        item(1, "random", "yes"),
        item(2, "random", "no"),
        item(3, "adversarial", "yes"),
        item(4, "adversarial", "no"),
    ]
    answers = {
        items[0].key: "Yes.",
        items[1].key: "No, there is not.",  # random: perfect
        items[2].key: "Yes",
        items[3].key: "Yes",
    }  # adversarial: FP
    m = pope.score(items, answers)
    assert m["splits"]["random"]["f1"] == pytest.approx(100.0)
    # adversarial: TP=1, FP=1 -> precision 1/2, recall 1 -> F1 2/3
    assert m["splits"]["adversarial"]["f1"] == pytest.approx(200 / 3)
    assert m["splits"]["adversarial"]["yes_ratio"] == pytest.approx(100.0)
    assert m["f1"] == pytest.approx((100 + 200 / 3) / 2)
    assert m["accuracy"] == pytest.approx((100 + 50) / 2)
