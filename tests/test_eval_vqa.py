"""VQA answer normalisation, soft accuracy and the VQAv2/VizWiz submission files."""

import json

import pytest

from llava_mini_jax.eval import vqa
from llava_mini_jax.eval.item import EvalItem


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),  # number words become digits
        ("two.", "2"),  # trailing period dropped
        ("2.", "2"),
        ("The dog.", "dog"),  # articles dropped
        ("a cat", "cat"),
        ("an apple", "apple"),
        ("None", "0"),  # 'none' is a number word in the official table
        ("dont", "don't"),  # contractions get their apostrophe back
        ("yes, it is!", "yes it is"),  # ',' and '?' removed first; '!' touching the end -> ' '
        ("hello-world", "hello world"),  # punctuation not touching a space becomes a space
        ("left - right", "left right"),  # touching a space: deleted
        ("3.5", "3.5"),  # a period before a digit stays
        ("What's that", "what 's that"),  # "'s" split off
        ("  Red\n", "red"),
        ("1,000", "1000"),  # commas always removed
    ],
)
def test_normalize_answer(raw, expected):
    assert vqa.normalize_answer(raw) == expected


def test_period_removal_stops_after_32():
    # The reference passes re.UNICODE (32) as re.sub's count: the 33rd period survives.
    assert vqa.normalize_answer("." * 33) == "."


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_counts_matching_humans(matches, expected):
    # 10 humans; leave-one-out mean of min(1, matches among the other 9 / 3).
    # e.g. 1 match: 9 subsets keep it (1/3 each), 1 drops it: 9 * (1/3) / 10 = 0.3.
    humans = ["2"] * matches + ["cat"] * (10 - matches)
    assert vqa.vqa_accuracy("2", humans) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    humans = ["two"] * 3 + ["2."] * 1 + ["three"] * 6
    # 'two', 'two', 'two', '2.' all normalise to '2': 4 matches -> 1.0
    assert vqa.vqa_accuracy("Two.", humans) == 1.0
    assert vqa.vqa_accuracy("the 3", humans) == 1.0  # 6 'three' -> '3'


def test_vqa_accuracy_needs_humans():
    with pytest.raises(ValueError, match="at least one"):
        vqa.vqa_accuracy("x", [])


def test_score_averages_and_counts_missing_as_empty():
    items = [
        EvalItem(1, "q1", meta={"answers": ["yes"] * 10}),
        EvalItem(2, "q2", meta={"answers": ["no"] * 2 + ["yes"] * 8}),
    ]
    answers = {items[0].key: "Yes."}  # item 2 unanswered -> '' -> 0
    assert vqa.score(items, answers) == {"accuracy": pytest.approx(50.0), "count": 2}
    answers[items[1].key] = "no"  # 2 matches -> 0.6
    assert vqa.score(items, answers)["accuracy"] == pytest.approx(80.0)


def test_vqav2_submission_lists_every_test_question(tmp_path):
    items = [EvalItem(5, "q"), EvalItem(7, "q")]
    answers = {items[0].key: "Two dogs."}
    path = vqa.write_vqav2_submission(items, answers, tmp_path / "up.json", [5, 6, 7])
    assert json.loads(path.read_text()) == [
        {"question_id": 5, "answer": "2 dogs"},
        {"question_id": 6, "answer": ""},
        {"question_id": 7, "answer": ""},
    ]


def test_vizwiz_submission_by_image_and_requires_all_answers(tmp_path):
    items = [EvalItem(0, "q", meta={"image_name": "VizWiz_test_0.jpg"})]
    with pytest.raises(ValueError, match="question_id 0"):
        vqa.write_vizwiz_submission(items, {}, tmp_path / "up.json")
    path = vqa.write_vizwiz_submission(items, {items[0].key: "Unanswerable"}, tmp_path / "up.json")
    assert json.loads(path.read_text()) == [{"image": "VizWiz_test_0.jpg", "answer": "unanswerable"}]
